"""`switchboard`: the operator's command line for a Switchboard stack.

    switchboard up | down | status                  run the local stack (switchboard_stack)
    switchboard models list | add | enable | disable
    switchboard keys create | revoke | list
    switchboard chat "hello" --model M              streams the answer as it arrives
    switchboard usage summary [--start D --end D]
    switchboard gpu status | watch

Everything except up/down/status goes through the HTTP edge (see edge.py for why).
Exit codes are in exit_codes.py and `switchboard --help`.
"""

__version__ = "0.1.0"
