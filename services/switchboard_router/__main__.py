from switchboard_common.server import main
from switchboard_router.limits import workers_refusal
from switchboard_router.service import setup

if __name__ == "__main__":
    main("router", setup, workers_check=workers_refusal)
