"""A real terminal to photograph: tmux inside xterm on a private Xvfb display, captured from Xvfb's framebuffer.

`1.bukti_serving.jpg` must be a screenshot of serving, not text drawn into an image: the model server runs in a tmux
pane, a client types its request in another, and the picture is the X server's own framebuffer (Xvfb `-fbdir`
keeps it as an XWD file, read here without ImageMagick). What the panes show is also read back as text
(`tmux capture-pane`), so a test can check the image for machine paths without OCR.

Everything is started here and stopped by PID: Xvfb, xterm, the tmux server (its own socket, `-L`), and every
process a pane started (walked from the pane's shell with psutil).
"""

from __future__ import annotations

import os
import shlex
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import psutil

from msml.errors import ServerError

FONT = "DejaVu Sans Mono"
COLUMNS, ROWS = 150, 46
BACKGROUND, FOREGROUND = "#1e1e1e", "#dcdcdc"


def missing_binaries() -> list[str]:
    return [name for name in ("Xvfb", "xterm", "tmux") if not shutil.which(name)]


def read_xwd(path: Path):
    """The screen in an XWD file (Xvfb's `-fbdir` framebuffer) as a PIL RGB image (24/32-bit TrueColor only)."""
    from PIL import Image

    data = path.read_bytes()
    for order in "<>":
        header = struct.unpack(order + "25I", data[:100])
        if header[1] == 7:  # XWD file version
            break
    else:
        raise ServerError(f"{path.name}: not an XWD file")
    header_size, width, height, byte_order, bits_per_pixel, line = (header[i] for i in (0, 4, 5, 7, 11, 12))
    colours = header[19]
    if bits_per_pixel != 32:
        raise ServerError(f"{path.name}: {bits_per_pixel}-bit framebuffer (start Xvfb with a 24-bit screen)")
    offset = header_size + colours * 12
    raw = "BGRX" if byte_order == 0 else "XRGB"
    return Image.frombuffer("RGB", (width, height), data[offset : offset + line * height], "raw", raw, line, 1)


class Terminal:
    """`with Terminal(env) as term:` a tmux session shown in an xterm on its own Xvfb display.

    `env` is the shell's whole environment (HOME, PATH, PS1 ...): the panes see nothing else of ours.
    """

    def __init__(self, env: Mapping[str, str], cwd: Path, columns: int = COLUMNS, rows: int = ROWS) -> None:
        self.env, self.cwd, self.columns, self.rows = dict(env), cwd, columns, rows
        self.socket = f"msml-{uuid.uuid4().hex[:8]}"
        self._procs: list[subprocess.Popen] = []

    # --- tmux -----------------------------------------------------------------------------------------------

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise ServerError(f"tmux {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def split(self, rows: int, title: str) -> str:
        """A new pane of `rows` rows below the last one; returns its id."""
        pane = self.tmux("split-window", "-v", "-l", str(rows), "-c", str(self.cwd), "-P", "-F", "#{pane_id}")
        pane = pane.strip()
        self.tmux("select-pane", "-t", pane, "-T", title)
        return pane

    def type(self, pane: str, line: str) -> None:
        """Type `line` in `pane` and press Enter, as a person would."""
        self.tmux("send-keys", "-t", pane, "-l", line)
        self.tmux("send-keys", "-t", pane, "Enter")

    def text(self, pane: str) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", pane)

    def screen_text(self) -> str:
        """What every pane shows, top to bottom (the text of the picture)."""
        panes = self.tmux("list-panes", "-F", "#{pane_id}").split()
        return "\n".join(self.text(p) for p in panes)

    def wait_for(self, pane: str, words: list[str], timeout: float, alive=None) -> str:
        """The pane's text once it shows every word; ServerError with the pane's last lines after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text(pane)
            if all(w in text for w in words):
                return text
            if time.monotonic() > deadline or (alive is not None and not alive()):
                last = " | ".join(line for line in text.splitlines() if line.strip())[-600:]
                raise ServerError(f"the terminal never showed {words}: it shows: {last}")
            time.sleep(0.3)

    def pane_processes(self, pane: str) -> list[psutil.Process]:
        """The processes started from `pane`'s shell (not the shell)."""
        pid = int(self.tmux("display-message", "-p", "-t", pane, "#{pane_pid}").strip())
        try:
            return psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    # --- the display ----------------------------------------------------------------------------------------

    def __enter__(self) -> Terminal:
        if missing := missing_binaries():
            raise ServerError(f"{', '.join(missing)} not installed (run scripts/install-system-deps.sh)")
        self._dir = Path(tempfile.mkdtemp(prefix="msml-terminal-"))
        # the prompt as an rc file: PS1 in the environment is not carried through tmux to the pane's bash
        rc = self._dir / "bashrc"
        rc.write_text(f"PS1={shlex.quote(self.env.get('PS1', '$ '))}\n")
        shell = f"bash --noprofile --rcfile {shlex.quote(str(rc))}"
        try:
            # a plain bash: the machine's rc files (a prompt naming this host, aliases) stay out of the picture
            self.tmux(
                "new-session",
                "-d",
                "-s",
                "main",
                "-x",
                str(self.columns),
                "-y",
                str(self.rows),
                "-c",
                str(self.cwd),
                shell,
            )
            self.tmux("set-option", "-g", "default-command", shell)
            self.tmux("set-option", "-g", "status", "off")
            self.tmux("set-option", "-g", "pane-border-status", "top")
            self.tmux("set-option", "-g", "pane-border-format", " #{pane_title} ")
            self._start_display()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_display(self) -> None:
        read, write = os.pipe()
        # a white root window: the dark terminal on it is cropped by its bounding box; no mouse pointer drawn
        xvfb = subprocess.Popen(
            [
                "Xvfb",
                "-displayfd",
                str(write),
                "-screen",
                "0",
                "1600x1000x24",
                "-fbdir",
                str(self._dir),
                "-nolisten",
                "tcp",
                "-wr",
                "-nocursor",
            ],
            pass_fds=(write,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._procs.append(xvfb)
        os.close(write)
        with os.fdopen(read) as pipe:
            display = pipe.readline().strip()
        if not display:
            raise ServerError("Xvfb did not start (no display number)")
        self.display = f":{display}"
        env = {**self.env, "DISPLAY": self.display}
        xterm = subprocess.Popen(
            [
                "xterm",
                "-fa",
                FONT,
                "-fs",
                "11",
                "-bg",
                BACKGROUND,
                "-fg",
                FOREGROUND,
                "-geometry",
                f"{self.columns}x{self.rows}+0+0",
                "-b",
                "8",
                "-e",
                "tmux",
                "-L",
                self.socket,
                "attach",
                "-t",
                "main",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._procs.append(xterm)
        deadline = time.monotonic() + 20
        while "attached" not in self.tmux("list-sessions", "-F", "#{?session_attached,attached,}"):
            if time.monotonic() > deadline or xterm.poll() is not None:
                raise ServerError("xterm did not attach to the tmux session on the Xvfb display")
            time.sleep(0.2)

    def screenshot(self, path: Path) -> Path:
        """The xterm window as a JPG (cut from the framebuffer at the window's edges)."""
        from PIL import ImageChops

        time.sleep(0.5)  # one redraw after the last output (xterm paints asynchronously; not a data wait)
        screen = read_xwd(self._dir / "Xvfb_screen0")
        white = screen.point(lambda _: 255)
        box = ImageChops.difference(screen, white).getbbox()
        if box is None:
            raise ServerError("the terminal's screen is empty (xterm drew nothing)")
        path.parent.mkdir(parents=True, exist_ok=True)
        screen.crop(box).save(path, "JPEG", quality=92)
        return path

    def __exit__(self, *exc) -> None:
        """Stop what the panes started, then tmux, xterm and Xvfb: each by its PID."""
        try:
            panes = self.tmux("list-panes", "-a", "-F", "#{pane_id}").split()
            server = int(self.tmux("display-message", "-p", "#{pid}").strip())
        except ServerError:
            panes, server = [], None
        started = [p for pane in panes for p in self.pane_processes(pane)]
        for proc in started:
            with _quiet():
                proc.terminate()
        _, alive = psutil.wait_procs(started, timeout=10)
        for proc in alive:
            with _quiet():
                proc.kill()
        if server is not None:
            with _quiet():
                self.tmux("kill-server")
            with _quiet():
                psutil.Process(server).wait(timeout=5)
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if getattr(self, "_dir", None):
            shutil.rmtree(self._dir, ignore_errors=True)


class _quiet:
    """Suppress the errors of stopping something that already stopped."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        return kind is not None and issubclass(kind, (psutil.Error, ServerError, subprocess.TimeoutExpired))
