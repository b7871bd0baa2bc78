from switchboard_common.server import main
from switchboard_gpu.service import setup

if __name__ == "__main__":
    main("gpu", setup)
