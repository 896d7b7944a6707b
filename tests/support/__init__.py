"""What the tests share, by theme (fixtures live in tests/conftest.py and are built on these):
``processes`` the console scripts, a daemon's handle and polling with a deadline; ``books`` datasets and
the state as readers see it; ``disks`` small real filesystems; ``page`` the review page's process and
HTTP; ``runs`` whole runs of bin/run-pipeline; ``plugins`` and ``planted`` synthesizers that misbehave
on purpose (loaded by generator processes as ``tests.support.plugins:NAME``); ``corpus`` texts of a real
corpus's lengths; ``slurm_cluster`` a private Slurm cluster."""
