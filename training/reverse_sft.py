"""Train the reversed-instruction model P(instruction | response).

TRL script style: `--config RECIPE.yaml` (or `--config=RECIPE.yaml`) plus `--key value` overrides, parsed by
TRL's `TrlParser.parse_args_and_config` from `safer_instruct.training.recipe.make_parser` (a recipe's `env:` and
`datasets:` work as in TRL's scripts); the logic is in safer_instruct.training.

    python training/reverse_sft.py --config training/recipes/smollm2-135m/reverse_sft.yaml --max_steps 10
    accelerate launch --config_file training/accelerate/fsdp.yaml training/reverse_sft.py --config RECIPE.yaml
"""

import sys

from safer_instruct.errors import SaferInstructError
from safer_instruct.training import main

if __name__ == "__main__":
    try:
        sys.exit(main("reverse-sft"))
    except SaferInstructError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
