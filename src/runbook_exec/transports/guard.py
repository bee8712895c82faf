"""What runs on the host around every command, so that a command never outlives its
controller and two attempts at a step never run there at once.

The login shell is the session and process-group leader sshd made it (no terminal is
allocated). It prints its pid, keeps the channel's stdin aside, and then:

- starts a watchdog that blocks reading the channel's stdin. The controller never writes
  there and never sends EOF, so the read returns only when the channel closes. If the
  command is still running then, its controller died, gave up on it (timeout, a second
  Ctrl-C) or lost the connection: the watchdog ends the whole process group — TERM, up to
  2 s while the command is still there, KILL. If the command had ended, the watchdog just
  goes: what the command started in the background and left running is its own (a job
  that keeps the command's output open holds the step until its timeout, as with ssh).
  A TERM to the group (a later attempt ending this one) sets it off the same way.
- looks for a command still running on the host for this login: its wrapper (and, while
  ending it, its watchdog) keep ~/.cache/runbook-exec/<host>-<port>.lock open as fd 9, and
  wrote their pids, run, step and attempt into it. "Still running" is one of those two pids
  holding that very file open (/proc/PID/fd/9), which a reused pid cannot fake. An attempt
  of the same run waits a few seconds for its predecessor to go, then ends it (TERM, then
  KILL): only an attempt whose controller is gone can still be there (a crash, a timeout,
  a connection that dropped without a word). A command of another run (another store's)
  waits its turn; two that start at the same instant are not kept apart.
  The watchdog runs already while it waits, so a controller that gives up meanwhile ends
  the wait too, and the command never starts.
- runs the command in the foreground, as `sh -c` does (default signals, nothing of the
  wrapper's names; its own `$$` when it asks for it: then through `exec sh -c`), with stdin
  from /dev/null; the wrapper catches TERM only to outlive its command, so the watchdog
  can give the command its grace period.

With become, the command runs as `sudo -u USER -- sh -c COMMAND`. A become password is the
first line the controller writes on the channel: the wrapper reads it into a variable it
never exports, and hands it to sudo on a pipe from the built-in printf, so it is never on a
command line, in an environment or in a file; the command itself starts with stdin from
/dev/null, so it cannot read what sudo did not.

Besides the two forks, all of it is shell built-ins: it costs the host about a millisecond
a command. Without /proc (not Linux) the watchdog still works and the check for a running
predecessor is skipped.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

GRACE_TICKS = 20  # tenths of a second between TERM and KILL
WAIT_BEFORE_ENDING = 50  # tenths of a second an attempt waits for its predecessor to go


@dataclass(frozen=True)
class Mark:
    """Which run, step and attempt a command belongs to (written into the host's lock)."""

    run_id: str
    step: str  # "<section>.<index>", e.g. "steps.3"
    attempt: int


# The script is sh; `kill -TERM -PGID` is the spelling dash, bash and busybox all read
# (dash has no `--`, and procps' /bin/kill reads `-TERM -123` as signal 123's neighbours).
SCRIPT = """\
{password}exec 3<&0 </dev/null
rbx_lock=
{sudo}
{kill}
if [ -d /proc/$$ ]; then
  rbx_alive() {{ [ -d "/proc/$1" ]; }}
else
  rbx_alive() {{ rbx_kill -0 "$1"; }}
fi
trap : TERM
if [ -n "{lock}" ] && [ -d /proc/$$/fd ]; then
  rbx_lock="$HOME/.cache/runbook-exec/{lock}.lock"
  [ -d "${{rbx_lock%/*}}" ] || mkdir -p "${{rbx_lock%/*}}" 2>/dev/null
  {{ command exec 9>>"$rbx_lock"; }} 2>/dev/null || rbx_lock=
fi
(
  exec 9>&-
  rbx_end() {{
    trap '' TERM
    rbx_alive $$ || exit 0  # it ended by itself: jobs it left running are its own
    if [ -n "$rbx_lock" ]; then
      exec 9>>"$rbx_lock"  # the command may still run: hold the host until it is gone
    fi
    rbx_kill -TERM -$$
    rbx_i=0
    while [ $rbx_i -lt {ticks} ] && rbx_alive $$; do
      sleep 0.1 || sleep 1; rbx_i=$((rbx_i + 1))
    done
    rbx_kill -KILL -$$
  }}
  trap rbx_end TERM; read -r _ <&3; rbx_end
) >/dev/null 2>&1 &
rbx_wd=$!
if [ -n "$rbx_lock" ]; then
  rbx_held() {{
    read -r rbx_pg rbx_hw rbx_run rbx_step rbx_try <"$rbx_lock" 2>/dev/null &&
      [ "$rbx_pg" != $$ ] && {{
        [ "/proc/$rbx_pg/fd/9" -ef "$rbx_lock" ] || [ "/proc/$rbx_hw/fd/9" -ef "$rbx_lock" ]
      }}
  }}
  rbx_gone() {{
    rbx_n=0
    while rbx_held; do
      [ $rbx_n -ge $1 ] && return 1
      sleep 0.1 || sleep 1; rbx_n=$((rbx_n + 1))
    done
  }}
  if rbx_held && ! rbx_gone {wait}; then
    if [ "$rbx_run" = {run} ]; then
      echo "runbook-exec: ending attempt $rbx_try of $rbx_step, still running here" \\
        "(process group $rbx_pg)" >&2
      rbx_kill -TERM -"$rbx_pg"
      rbx_gone {wait} || {{ rbx_kill -KILL -"$rbx_pg"; rbx_gone 600; }}
    else
      echo "runbook-exec: waiting for run $rbx_run to finish $rbx_step here" \\
        "(process group $rbx_pg)" >&2
      while rbx_held; do sleep 0.1 || sleep 1; done
    fi
  fi
  echo "$$ $rbx_wd {run} {step} {attempt}" >"$rbx_lock"
fi
(exec 3<&- 9>&- && {body})
exit $?
"""

# A command that asks who its shell is gets a shell of its own (`exec sh -c`), as `sh -c`
# would give it; any other runs in the wrapper's foreground subshell, which behaves the same
# and saves the host an exec (a millisecond a command).
OWN_SHELL = ("$$", "${$}", "PPID", "$0", "${0}")
IN_SUBSHELL = (
    "unset rbx_lock rbx_wd rbx_pg rbx_hw rbx_run rbx_step rbx_try rbx_n rbx_pw; "
    "unset -f rbx_sudo rbx_kill rbx_alive rbx_held rbx_gone; eval {command}"
)
READ_PASSWORD = "IFS= read -r rbx_pw || exit 125\n"
SUDO = 'rbx_sudo() { sudo -n "$@"; }'
SUDO_WITH_PASSWORD = "rbx_sudo() { printf '%s\\n' \"$rbx_pw\" | sudo -S -p '' \"$@\"; }"

PLAIN_KILL = 'rbx_kill() { kill "$@" 2>/dev/null; }'
# As the user the command became (through the same sudo), then as the login user: in that
# order, since the second may end the caller itself. Says whether either reached a process.
BECOME_KILL = (
    'rbx_kill() {{ rbx_sudo -u {user} sh -c \'kill "$@"\' sh "$@" 2>/dev/null; rbx_s=$?; '
    'kill "$@" 2>/dev/null || return $rbx_s; }}'
)


@dataclass(frozen=True)
class Become:
    """Whom the command runs as, through sudo; with the password sudo asks for, if any
    (written as the channel's first line: see `Become.first_line`)."""

    user: str
    password: str | None = field(default=None, repr=False)

    @property
    def first_line(self) -> bytes:
        """What the controller writes on the channel before anything else (nothing when no
        password is needed)."""
        return b"" if self.password is None else self.password.encode() + b"\n"


def guarded(command: str, host: str, mark: Mark | None, become: Become | None) -> str:
    """The script that runs `command` on `host` under the lock and the watchdog, as
    `become` says."""
    with_password = become is not None and become.password is not None
    if become is None:
        kill, body = PLAIN_KILL, _body(command)
    else:
        user = shlex.quote(become.user)
        kill = BECOME_KILL.format(user=user)
        # The command's stdin is the password's pipe until it says otherwise.
        text = f"exec </dev/null; {command}" if with_password else command
        body = f"rbx_sudo -u {user} -- sh -c {shlex.quote(text)}"
    run, step, attempt = (mark.run_id, mark.step, mark.attempt) if mark else ("-", "-", 0)
    return SCRIPT.format(
        password=READ_PASSWORD if with_password else "",
        sudo=SUDO_WITH_PASSWORD if with_password else SUDO,
        kill=kill,
        lock=lock_name(host) if mark else "",
        wait=WAIT_BEFORE_ENDING,
        run=_word(run),
        step=_word(step),
        attempt=int(attempt),
        ticks=GRACE_TICKS,
        body=body,
    )


def _body(command: str) -> str:
    quoted = shlex.quote(command)
    if any(asks in command for asks in OWN_SHELL):
        return f"exec sh -c {quoted}"
    return IN_SUBSHELL.format(command=quoted)


def lock_name(host: str) -> str:
    """The host's name as one safe file name (inventory names may hold anything)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", host).lstrip(".") or "_"


def _word(text: str) -> str:
    """A value written into the lock and compared there: one word, no quoting needed."""
    return re.sub(r"[^A-Za-z0-9._:-]", "_", text) or "-"
