"""push and pull through DVC's own API, with failures that name the remote and say what to check.

DVC does the transfer; on a failure it reports only the transport's words
("Could not connect to the endpoint URL", "Connect call failed"), so a user
with several remotes cannot tell which one, or what to look at.
"""

from pipeline.errors import PipelineError


def transfer(direction: str, targets: list[str], remote: str | None):
    """Run `dvc push` or `dvc pull` on `targets` (all when empty); returns DVC's result."""
    from dvc.repo import Repo

    repo = Repo()
    try:
        name = remote or repo.config["core"].get("remote")
        if not name:
            raise PipelineError(
                "no DVC remote is set; add one with `dvc remote add -d NAME URL` "
                "(README: Two machines)"
            )
        settings = repo.config["remote"].get(name)
        if settings is None:
            raise PipelineError(f"there is no remote named '{name}'; `dvc remote list` shows them")
        try:
            return getattr(repo, direction)(targets=list(targets) or None, remote=name)
        except Exception as error:  # Whatever the transport raised, said with what to check.
            where = settings["url"]
            if "endpointurl" in settings:
                where += f" at {settings['endpointurl']}"
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            raise PipelineError(
                f"{direction} {'to' if direction == 'push' else 'from'} remote '{name}' "
                f"({where}) failed: {reason}; check that the server is running and reachable "
                "from here, the remote's url in .dvc/config, and its credentials in "
                ".dvc/config.local"
            ) from None
    finally:
        repo.close()
