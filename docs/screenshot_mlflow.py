"""Screenshot of an MLflow UI page in headless Chromium, taken once the page shows the expected text.

    mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000 &
    python docs/screenshot_mlflow.py \
        'http://127.0.0.1:5000/#/compare-runs?runs=["<run id>","<run id>"]&experiments=["1"]' \
        docs/img/mlflow_compare.png --wait-for three-stage-real

The UI renders client-side, so `chromium --screenshot` alone captures a loading skeleton; this drives
Debian's `chromium` over the DevTools protocol (loopback only): navigate, poll the page text until
every `--wait-for` string is there, let charts settle, capture.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


async def _capture(ws_url: str, url: str, wait_for: list[str], timeout: float, settle: float, out: Path,
                   scripts: list[str], max_height: int) -> None:
    import websockets

    async with websockets.connect(ws_url, max_size=64 << 20) as ws:
        ids = iter(range(1, 1 << 30))

        async def call(method: str, **params):
            msg_id = next(ids)
            await ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("id") == msg_id:
                    return reply.get("result", {})

        await call("Page.enable")
        await call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while True:
            text = (await call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''",
                               returnByValue=True)).get("result", {}).get("value", "")
            if all(w in text for w in wait_for):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"page never showed {wait_for} within {timeout:.0f}s; it shows: {text[:600]!r}")
            await asyncio.sleep(1.0)
        for snippet in scripts:  # e.g. close a side panel, open an artifact
            await call("Runtime.evaluate", expression=snippet)
            await asyncio.sleep(3.0)
        await asyncio.sleep(settle)
        params = {"format": "png"}
        if max_height:  # the whole page down to max_height pixels, not just the window
            size = (await call("Page.getLayoutMetrics"))["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"],
                                                            "height": min(size["height"], max_height), "scale": 1})
        shot = await call("Page.captureScreenshot", **params)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--wait-for", action="append", default=[], help="text the page must show (repeatable)")
    parser.add_argument("--window-size", default="1600,1200")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the text appears (charts)")
    parser.add_argument("--port", type=int, default=9333)
    parser.add_argument("--js", action="append", default=[], help="JavaScript run before the capture (repeatable)")
    parser.add_argument("--max-height", type=int, default=0, help="capture the page down to this height (0: window)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as profile:
        chrome = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={args.window_size}", f"--remote-debugging-port={args.port}",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(120):
                try:
                    pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{args.port}/json", timeout=5))
                    ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
                    break
                except (OSError, StopIteration):
                    time.sleep(1)
            else:
                raise RuntimeError("chromium's DevTools endpoint did not come up")
            asyncio.run(_capture(ws_url, args.url, args.wait_for, args.timeout, args.settle, args.out, args.js,
                                 args.max_height))
        finally:
            chrome.terminate()
            chrome.wait(timeout=30)
    print(args.out)


if __name__ == "__main__":
    main()
