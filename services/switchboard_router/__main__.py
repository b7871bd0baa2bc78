from switchboard_common.server import main
from switchboard_router.service import setup

if __name__ == "__main__":
    main("router", setup)
