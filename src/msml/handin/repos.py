"""The exported units as the student hands them in: checked names, git repositories committed as the student, the zip.

Commits carry the student's own git identity (`--author "Name <email>"`, else `git config user.name/user.email`
of the machine), never a tool's: the course reviewer reads the history as the student's work.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

from msml.config import Settings
from msml.errors import ExportError
from msml.handin.names import NAME

AUTHOR = re.compile(r"\s*(?P<name>[^<>]*?)\s*<(?P<email>[^<>\s]+@[^<>\s]+)>\s*")


def check_names(settings: Settings) -> None:
    """Student and user names become folder, repository and image names: letters, digits, `-` and `_` only."""
    for option, value in (
        ("--student", settings.student),
        ("--github-user", settings.github_user),
        ("--dockerhub-user", settings.dockerhub_user),
    ):
        if not NAME.fullmatch(value or ""):
            raise ExportError(f"{option} {value!r} is not a valid name: use only letters, digits, '-' and '_'")


def git_identity(author: str | None = None, cwd: Path | None = None) -> tuple[str, str]:
    """(name, email) of the commits: `author` ("Name <email>") when given, else the machine's git config."""
    if author:
        match = AUTHOR.fullmatch(author)
        if not match or not match["name"]:
            raise ExportError(f"--author {author!r} is not 'Your Name <you@example.com>'")
        return match["name"], match["email"]

    def config(key: str) -> str:
        result = subprocess.run(["git", "config", key], cwd=cwd, capture_output=True, text=True)
        return result.stdout.strip()

    name, email = config("user.name"), config("user.email")
    if not name or not email:
        raise ExportError(
            "no git identity for the exported commits: set yours once with "
            "`git config --global user.name 'Your Name'` and `git config --global user.email you@example.com`, "
            "or pass --author 'Your Name <you@example.com>'"
        )
    return name, email


def clear_worktree(repo: Path) -> None:
    """Remove everything in `repo` but its `.git`: a re-export writes the files anew on top of the history."""
    if not repo.exists():
        return
    for path in repo.iterdir():
        if path.name == ".git":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def git_commit(repo: Path, message: str, identity: tuple[str, str]) -> bool:
    """Commit the export on `main` as `identity` (set for that commit only, not in the repo's config).

    A new folder gets `git init -b main` and its first commit; an existing clone (a re-export) gets a commit on
    top of its history, so pushing it fast-forwards. Returns False when nothing changed (no empty commit).
    """
    name, email = identity
    base = ["git", "-c", f"user.name={name}", "-c", f"user.email={email}", "-c", "commit.gpgsign=false"]

    def git(*args: str) -> str:
        result = subprocess.run([*base, *args], cwd=repo, capture_output=True, text=True)
        if result.returncode != 0:
            raise ExportError(f"git {args[0]} in {repo} failed: {result.stderr.strip()}")
        return result.stdout

    if not (repo / ".git").exists():
        git("init", "-q", "-b", "main")
    git("add", "-A")
    if not git("status", "--porcelain").strip():
        return False
    git("commit", "-q", "-m", message)
    return True


def zip_folder(folder: Path, archive: Path) -> Path:
    """Zip `folder` (its name as the top entry, empty folders kept), in a stable order."""
    archive.unlink(missing_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(folder, folder.name + "/")
        for path in sorted(folder.rglob("*")):
            arcname = path.relative_to(folder.parent).as_posix() + ("/" if path.is_dir() else "")
            zf.write(path, arcname)
    return archive
