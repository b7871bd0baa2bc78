from switchboard_common.server import main
from switchboard_provider.service import setup

if __name__ == "__main__":
    main("provider", setup)
