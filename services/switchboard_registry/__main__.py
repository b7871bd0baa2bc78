from switchboard_common.server import main
from switchboard_registry.service import setup

if __name__ == "__main__":
    main("registry", setup)
