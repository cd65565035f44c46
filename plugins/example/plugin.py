"""distillery plugin protocol 1, the smallest useful plugin (docs/plugins.md).

Says hello, reads the request, lists each input (a stored result's files, a dataset's
settings) into out_dir/summary.json, and reports progress, a metric and its result.
"""
import json, os, sys

def say(**msg):
    print(json.dumps(msg), flush=True)

say(type="hello", protocol=1, name="example", produces="files")
req = json.loads(sys.stdin.readline())
summary = {"params": req["params"], "inputs": {}}
inputs = req.get("inputs", {})
for i, (role, inp) in enumerate(sorted(inputs.items())):
    files = sorted(os.listdir(inp["path"])) if inp.get("path") else []
    summary["inputs"][role] = {"kind": inp["kind"], "name": inp["name"], "files": files}
    say(type="progress", done=i + 1, total=len(inputs), message=f"read {role}")
with open(os.path.join(req["out_dir"], "summary.json"), "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
say(type="metric", name="inputs", value=len(inputs))
say(type="result", outputs={"summary": "summary.json"}, metrics={"inputs": len(inputs)})
