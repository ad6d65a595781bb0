#!/usr/bin/env python3
"""An agent-style loop on sandpit: a "model" writes code, the sandbox runs it, the model reads
the result (or the error) and tries again, and the sandbox is deleted at the end.

The model here is scripted (no LLM): its first attempt has a bug, and it fixes the bug from
the traceback it is shown, which is the loop a real coding agent runs.

    ./scripts/serve.sh &                  # a server on 127.0.0.1:8787
    pip install ./clients/python
    python examples/agent_loop.py         # SANDPIT_URL / SANDPIT_AUTH_TOKEN are honoured
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

try:
    import sandpit
except ImportError:  # run from a checkout without installing the SDK
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients" / "python" / "src"))
    import sandpit

TASK = "Write /workspace/answer.json with the first 20 primes and their sum."
MAX_STEPS = 4

FIRST_TRY = """\
import json

def is_prime(n):
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))

primes = []
n = 2
while len(primes) < 20:
    if is_prime(n):
        primes.append(n)
    n += 1
json.dump({"primes": primes, "sum": sum(primes)}, open("/workspace/answer.json", "w"))
print(f"found {len(primes)} primes")
"""


def model(task: str, feedback: Optional[str], attempts: List[str]) -> str:
    """A stand-in for an LLM: proposes code for ``task`` given the last run's error."""
    if not attempts:
        return FIRST_TRY
    if feedback and "NameError" in feedback and "math" in feedback:
        return "import math\n" + attempts[-1]
    raise RuntimeError(f"the scripted model has no fix for:\n{feedback}")


def run(client: sandpit.Client) -> dict[str, object]:
    with client.create(keepalive_seconds=300) as sb:
        print(f"sandbox {sb.id} created")
        attempts: List[str] = []
        feedback: Optional[str] = None
        for step in range(1, MAX_STEPS + 1):
            code = model(TASK, feedback, attempts)
            attempts.append(code)
            sb.files.write_text("/workspace/solution.py", code)
            result = sb.exec(["python3", "solution.py"], timeout_ms=30_000)
            print(f"attempt {step}: exit {result.exit_code} in {result.duration_ms} ms")
            if result.ok:
                answer: dict[str, object] = json.loads(sb.files.read_text("/workspace/answer.json"))
                # Check the answer in the sandbox's stateful interpreter, as an agent would.
                check = sb.run_code(f"answer = {answer!r}\nsum(answer['primes']) == answer['sum']").check()
                print(f"answer: {answer} (verified: {check.text})")
                return answer
            feedback = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.stdout
            print(f"  error: {feedback}")
        raise RuntimeError(f"no working code after {MAX_STEPS} attempts")
    # Leaving the `with` deleted the sandbox, also on the error path.


def main() -> int:
    with sandpit.Client() as client:
        try:
            answer = run(client)
        except sandpit.SandpitError as e:
            print(f"sandpit error: {e}", file=sys.stderr)
            return 2
    print("sandbox deleted")
    return 0 if answer.get("sum") == 639 else 1


if __name__ == "__main__":
    sys.exit(main())
