#!/usr/bin/python
# Copyright: onnxfleet contributors
# Apache-2.0 (see COPYING or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: http_ready
short_description: Wait until every URL answers 200, within a deadline in seconds
version_added: 0.1.0
description:
  - Asks each URL in turn, again and again, until all have answered 200 once or the
    deadline has passed. It is one task on the node, where C(ansible.builtin.uri) with
    C(until) would cost a module run per try and overrun its C(retries) by the time each
    try takes.
  - Meant for readiness endpoints (C(/readyz)) on the node itself.
author:
  - onnxfleet developers (@onnxfleet)
options:
  urls:
    description:
      - The URLs to wait for, e.g. V(http://127.0.0.1:8001/readyz).
    type: list
    elements: str
    required: true
  timeout:
    description:
      - Seconds to wait, from the module's start, for all of them.
    type: float
    default: 60
  interval:
    description:
      - Seconds between two rounds over the URLs not ready yet.
    type: float
    default: 0.5
  request_timeout:
    description:
      - Seconds one request may take.
    type: float
    default: 2
attributes:
  check_mode:
    support: full
    description: The module only reads.
notes:
  - Certificates are validated for C(https) URLs with the system's trust store.
"""

EXAMPLES = r"""
- name: Wait until both worker containers are ready (2 minutes at most)
  onnxfleet.serving.http_ready:
    urls:
      - http://127.0.0.1:8001/readyz
      - http://127.0.0.1:8002/readyz
    timeout: 120
"""

RETURN = r"""
elapsed:
  description: Seconds waited.
  returned: always
  type: float
  sample: 2.6
answers:
  description: Each URL's last answer, its HTTP status or the error of its last try.
  returned: always
  type: dict
  sample: {"http://127.0.0.1:8001/readyz": 200, "http://127.0.0.1:8002/readyz": "connection refused"}
"""

import time
from urllib.error import HTTPError, URLError

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url


def ask(url, timeout):
    """The URL's HTTP status, or what went wrong."""
    try:
        with open_url(url, timeout=timeout, follow_redirects="none") as response:
            return response.getcode()
    except HTTPError as e:
        return e.code
    except URLError as e:
        reason = getattr(e, "reason", e)
        return getattr(reason, "strerror", None) or str(reason)
    except (OSError, ValueError) as e:
        return str(e)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            urls=dict(type="list", elements="str", required=True),
            timeout=dict(type="float", default=60),
            interval=dict(type="float", default=0.5),
            request_timeout=dict(type="float", default=2),
        ),
        supports_check_mode=True,
    )
    urls = module.params["urls"]
    if not urls:
        module.fail_json(msg="urls: name at least one URL to wait for")
    start = time.monotonic()
    deadline = start + module.params["timeout"]
    answers = {url: "not asked" for url in urls}
    waiting = list(urls)
    while True:
        for url in list(waiting):
            answers[url] = ask(url, module.params["request_timeout"])
            if answers[url] == 200:
                waiting.remove(url)
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(max(0.0, min(module.params["interval"], deadline - time.monotonic())))
    result = dict(changed=False, elapsed=round(time.monotonic() - start, 1), answers=answers)
    if waiting:
        module.fail_json(
            msg="not ready within %ss: %s"
            % (module.params["timeout"], ", ".join("%s (%s)" % (url, answers[url]) for url in waiting)),
            **result,
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
