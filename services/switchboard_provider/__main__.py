from switchboard_common.server import main
from switchboard_provider.service import setup


def _stateless(_settings: object) -> None:
    """The provider keeps nothing across calls that its workers would need to share."""
    return None


if __name__ == "__main__":
    main("provider", setup, workers_check=_stateless)
