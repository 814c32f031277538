"""Send the model card's example through the edge and the orchestrator from several threads.

    spread.py URL CARD REQUESTS THREADS [CA_FILE TOKEN_FILE]

Prints JSON: answers per status, requests served per container (X-Container), the
labels predicted, and the first error seen. Standard library only (runs anywhere).
"""

import json
import ssl
import sys
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor


def main() -> int:
    url, card_path, requests, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    context = ssl.create_default_context(cafile=sys.argv[5]) if len(sys.argv) > 5 else None
    headers = {"Content-Type": "application/json"}
    if len(sys.argv) > 6:
        with open(sys.argv[6], encoding="utf-8") as handle:
            headers["Authorization"] = "Bearer " + handle.read().strip()
    with open(card_path, encoding="utf-8") as handle:
        card = json.load(handle)
    body = json.dumps({"inputs": card["example"]["inputs"]}).encode()

    def one(index: int) -> tuple[int, str, object]:
        del index
        request = urllib.request.Request(url + "/run_model", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:
                answer = json.load(response)
                return response.status, response.headers.get("X-Container", ""), answer["outputs"]["label"]
        except urllib.error.HTTPError as exc:
            return exc.code, "", exc.read().decode(errors="replace")[:300]
        except OSError as exc:
            return 0, "", str(exc)

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(one, range(requests)))
    errors = [detail for status, container, detail in results if status != 200]
    print(
        json.dumps(
            {
                "statuses": dict(Counter(str(status) for status, container, label in results)),
                "served": dict(Counter(container for status, container, label in results if status == 200)),
                "labels": sorted({str(label) for status, container, label in results if status == 200}),
                "first_error": errors[0] if errors else None,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
