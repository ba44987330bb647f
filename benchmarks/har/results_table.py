"""Print the README tables of components/har from metrics/har.json (the har_evaluate stage's output).

    .venv/bin/python benchmarks/har/results_table.py [metrics/har.json]
"""
import json, sys
m = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "metrics/har.json"))
acc = m["accuracy"]; lat = m["latency"]; st = m["stream"]
print("| motion source | online accuracy, per clip (%) | continuous stream (%) | clip accuracy (%) | motion feature per chunk, p50 (ms) |")
print("|---|---|---|---|---|")
for s, name in [("tvl1","TV-L1 + flow CNN (the standard pipeline)"),("farneback","Farnebäck + flow CNN"),("dis","DIS + flow CNN"),
                ("imfe","IMFE (latency: onnxruntime)"),("rgb","RGB only")]:
    if s not in acc: continue
    a = acc[s]
    ms = lat["imfe_ms_p50"] if s == "imfe" else lat.get(f"{s}_feature_ms_p50")   # RGB only: no motion feature
    stream = (f"{100*a['stream_accuracy']:.1f} ± {100*a['stream_accuracy_std']:.1f}" if "stream_accuracy" in a else "—")
    print(f"| {name} | {100*a['online_accuracy']:.1f} ± {100*a['online_accuracy_std']:.1f} | {stream} | "
          f"{100*a['clip_accuracy']:.1f} | {'—' if ms is None else f'{ms:.1f}'} |")
print()
print("latency:", json.dumps({k: round(v,3) if isinstance(v,float) else v for k,v in lat.items()}, indent=0))
print("stream:", json.dumps(st, indent=0))
print("imfe:", m["imfe"]); print("teacher:", m["teacher"]); print("profile:", m["profile_seconds"]); print("points:", m["accuracy_points"])
