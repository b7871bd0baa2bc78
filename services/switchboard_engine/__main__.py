from switchboard_common.server import main
from switchboard_engine.service import setup

if __name__ == "__main__":
    main("engine", setup)
