from switchboard_common.server import main
from switchboard_usage.service import setup

if __name__ == "__main__":
    main("usage", setup)
