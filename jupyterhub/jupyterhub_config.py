"""JupyterHub recipe for a ProgEmu-Lite class (JupyterHub 5/6).

What it does for every student:

- copies the lessons (``notebooks/``) into ``~/progemu-lite/`` the first time their server
  starts; later starts keep the student's edits;
- sets ``PROGEMU_HOME`` in the server's environment to a shared folder that the instructor
  fills once (weights, tokenizers, sample data) and students only read, so nobody downloads
  gigabytes into a home directory;
- opens JupyterLab in the course folder.

Use it as your hub's configuration (or ``load_subconfig`` it from yours) and choose the
authenticator and spawner of your site below. Settings come from the environment of the hub:

- ``PROGEMU_COURSE_DIR``: a checkout of the ProgEmu-Lite repository (default
  ``/srv/progemu-lite``), readable by everyone;
- ``PROGEMU_SHARED_HOME``: the shared cache (default ``/srv/progemu-home``); make it read-only
  for students (``chmod -R a+rX,go-w``) after filling it as the instructor, e.g. with
  ``PROGEMU_HOME=/srv/progemu-home progemu-lite ...``.

The single-user servers need the course environment (``pip install -e ".[course]"``) on their
PATH. Exercises reach students through nbgrader's exchange (see the instructor guide).
tests/test_jupyterhub.py starts a hub with this file on 127.0.0.1 and opens a lesson as a student.
"""

import os
import pwd
import shutil
from pathlib import Path

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)

COURSE_DIR = Path(os.environ.get("PROGEMU_COURSE_DIR", "/srv/progemu-lite"))
SHARED_HOME = os.environ.get("PROGEMU_SHARED_HOME", "/srv/progemu-home")
# What each student gets a private, editable copy of, relative to COURSE_DIR.
COURSE_FILES = ["notebooks", "README.md"]
STUDENT_FOLDER = "progemu-lite"


def student_home(spawner) -> Path:
    """The home folder the spawner will start the student's server in."""
    # SimpleLocalProcessSpawner (tests) has its own; real spawners use the system account.
    home = getattr(spawner, "home_dir", None)
    return Path(home) if home else Path(pwd.getpwnam(spawner.user.name).pw_dir)


def copy_course(spawner) -> None:
    """Give the student their own copy of the lessons once; never overwrite their work."""
    target = student_home(spawner) / STUDENT_FOLDER
    if target.exists():
        return
    staging = target.with_name(f".{STUDENT_FOLDER}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in COURSE_FILES:
        source = COURSE_DIR / name
        if source.is_dir():
            shutil.copytree(source, staging / name, ignore=shutil.ignore_patterns(".*"))
        else:
            shutil.copy2(source, staging / name)
    try:
        account = pwd.getpwnam(spawner.user.name)
    except KeyError:
        account = None  # no system user (SimpleLocalProcessSpawner): the hub's user owns it
    if account is not None:
        for path in [staging, *staging.rglob("*")]:
            os.chown(path, account.pw_uid, account.pw_gid)
    os.replace(staging, target)  # a half-copied course never looks finished


c.Spawner.pre_spawn_hook = copy_course
c.Spawner.environment = {
    "PROGEMU_HOME": SHARED_HOME,
    # figures render without a display; lessons also set it, this covers scripts
    "MPLBACKEND": "Agg",
}
c.Spawner.default_url = f"/lab/tree/{STUDENT_FOLDER}/notebooks"
# Lessons run small models on CPUs: a cap keeps one student from starving the others.
c.Spawner.mem_limit = "4G"
c.Spawner.cpu_limit = 2.0

# Site choices (examples): PAM logins with system accounts, or your identity provider.
# c.JupyterHub.authenticator_class = "pam"
# c.JupyterHub.spawner_class = "systemd"  # jupyterhub-systemdspawner: enforces the limits above
# c.Authenticator.allowed_users = {"student1", "student2"}
# c.Authenticator.admin_users = {"instructor"}
