"""Model files from the Hugging Face hub by repository name (``OWNER/NAME[@REVISION]``).

Uses the optional ``huggingface_hub`` client, so the user's cache (``HF_HOME`` / ``HF_HUB_CACHE``),
token (``HF_TOKEN`` or a stored login) and offline mode (``HF_HUB_OFFLINE=1``) apply as in every
other library that uses it. Files already in the cache are not downloaded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .._version import __version__
from ..errors import UserError, first_line

HUB_PREFIX = "hf-hub:"  # from_pretrained("hf-hub:OWNER/NAME[@REVISION]")


def parse_hub_id(spec: str) -> tuple[str, str | None]:
    """``"hf-hub:owner/name@v1"`` (prefix optional) -> ``("owner/name", "v1")``; no ``@``: revision None (main)."""
    repo, at, revision = spec.removeprefix(HUB_PREFIX).partition("@")
    parts = repo.split("/")
    if not repo or len(parts) > 2 or not all(parts) or any(c.isspace() for c in repo) or (at and not revision):
        raise UserError(f"{spec!r} is not a hub model id: give OWNER/NAME or OWNER/NAME@REVISION "
                        f"(a branch, tag or commit)")
    return repo, revision or None


def _client():
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise ImportError("models from the Hugging Face hub need the optional huggingface_hub package: "
                          "pip install 'adaperceiver[hub]'") from None
    return huggingface_hub, constants, errors


def _missing_locally(repo_id: str, revision: str | None, filename: str, cache_dir: Path, offline: bool) -> str:
    """Which of repository, revision or file the local cache lacks (the hub could not be asked)."""
    why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the hub could not be reached"
    folder = cache_dir / ("models--" + repo_id.replace("/", "--"))
    rev = revision or "main"
    if not folder.is_dir():
        return f"hub repository {repo_id!r} is not in the local cache {cache_dir} and {why}"
    if not ((folder / "refs" / rev).is_file() or (folder / "snapshots" / rev).is_dir()):
        return f"revision {rev!r} of hub repository {repo_id!r} is not in the local cache {cache_dir} and {why}"
    return f"hub repository {repo_id}@{rev} has no file {filename} in the local cache {cache_dir} and {why}"


def hub_snapshot(spec: str, filenames: Sequence[str], token: str | bool | None = None) -> Path:
    """The local folder (a snapshot of the user's hub cache) holding ``filenames`` of the hub model ``spec``
    (``OWNER/NAME[@REVISION]``), downloading what the cache lacks. A missing repository, revision or
    file is a one-line :class:`UserError`."""
    repo_id, revision = parse_hub_id(spec)
    hub, constants, errors = _client()
    rev = revision or "main"
    paths = []
    for name in filenames:
        try:
            paths.append(Path(hub.hf_hub_download(repo_id, name, revision=revision, token=token,
                                                  library_name="adaperceiver", library_version=__version__)))
        except errors.LocalEntryNotFoundError:  # offline or unreachable, and not in the cache
            raise UserError(_missing_locally(repo_id, revision, name, Path(constants.HF_HUB_CACHE),
                                             constants.is_offline_mode())) from None
        except errors.RevisionNotFoundError:
            raise UserError(f"hub repository {repo_id!r} has no revision {rev!r}") from None
        except errors.RepositoryNotFoundError:
            raise UserError(f"hub repository {repo_id!r} does not exist or needs a login (HF_TOKEN) "
                            f"that may read it") from None
        except errors.EntryNotFoundError:
            raise UserError(f"hub repository {repo_id}@{rev} has no file {name}") from None
        except (errors.HfHubHTTPError, OSError) as e:
            raise UserError(f"cannot fetch {name} of hub repository {repo_id}@{rev}: {first_line(e)}") from None
    folders = {p.parent for p in paths}
    if len(folders) != 1:  # cannot happen with the hub's layout: one snapshot folder per revision
        raise UserError(f"hub files of {repo_id}@{rev} are not in one folder: {sorted(map(str, folders))}")
    return folders.pop()


__all__ = ["HUB_PREFIX", "hub_snapshot", "parse_hub_id"]
