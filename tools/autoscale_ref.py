#!/usr/bin/env python3
"""Reference decisions of Ray Serve's own autoscaler, for tests/serve/test_autoscale.c.

Runs the real Ray 2.50 code (no Ray cluster is started) on simulated load traces and writes what it
decided to tests/data/autoscale/*.json:
  - the router's metrics (ray.serve._private.router.RouterMetricsManager: samples of queued and
    per-replica ongoing requests, the report it pushes to the controller),
  - the controller's side (ray.serve._private.autoscaling_state.AutoscalingState: register, the
    total of requests, get_decision_num_replicas with its bounds),
  - the policy (ray.serve.autoscaling_policy.replica_queue_length_autoscaling_policy) and its
    formula (_calculate_desired_num_replicas) on a grid of values,
  - target_capacity (ray.serve._private.utils.get_capacity_adjusted_num_replicas and
    ray.serve._private.controller.calculate_target_capacity_direction).

A trace simulates a deployment under N(t) concurrent (closed-loop) requests, one step every
CONTROL_LOOP_INTERVAL_S = 0.1 s: replicas start `startup_s` after the target asks for them, the
router puts up to max_ongoing requests on each running replica (spread evenly) and queues the rest.
Each step, in Ray's order: the router's state changes (a request that queues while the router knows
no running replica pushes a report at once), the router samples its counts (every
min(0.5 s, metrics_interval_s)), pushes a report (every metrics_interval_s), then the controller
decides. The file holds the inputs of every step (run-length encoded) and Ray's total and decision
at every step where they changed; the C test replays the inputs through cs_as_* and must decide the
same at every step.

usage: tools/autoscale_ref.py [OUTDIR]   (default tests/data/autoscale)
Needs the Ray venv (tools/ray_venv.sh): ~/.cache/cserve/venv-ray/bin/python tools/autoscale_ref.py
"""
import json
import math
import os
import random
import sys
import types
from types import SimpleNamespace as NS

import ray
import ray.serve._private.autoscaling_state as AS
import ray.serve._private.router as R
from ray.serve._private.common import (
    DeploymentHandleSource,
    DeploymentID,
    ReplicaID,
    TargetCapacityDirection,
)
from ray.serve._private.constants import CONTROL_LOOP_INTERVAL_S
from ray.serve._private.controller import calculate_target_capacity_direction
from ray.serve._private.utils import get_capacity_adjusted_num_replicas
from ray.serve.autoscaling_policy import (
    _calculate_desired_num_replicas,
    replica_queue_length_autoscaling_policy,
)
from ray.serve.config import AutoscalingConfig

assert CONTROL_LOOP_INTERVAL_S == 0.1


class Clock:
    t = 0.0

    def time(self):
        return self.t


CLOCK = Clock()
# The router and the autoscaling state read time.time(): give them the simulated clock.
R.time = types.SimpleNamespace(time=CLOCK.time)
AS.time = types.SimpleNamespace(time=CLOCK.time)


class _Metric:
    def set_default_tags(self, *a, **k):
        pass

    def set(self, *a, **k):
        pass

    def inc(self, *a, **k):
        pass


class _Loop:
    def call_soon_threadsafe(self, *a, **k):
        pass


class _Controller:
    """Stands for the controller actor handle: collects the router's pushed reports."""

    def __init__(self):
        self.reports = []
        self.record_autoscaling_metrics_from_handle = NS(remote=self.reports.append)


def direction_name(d):
    return None if d is None else d.value


def new_router(dep, cfg):
    ctl = _Controller()
    mgr = R.RouterMetricsManager(
        dep, "handle", "proxy-actor", DeploymentHandleSource.PROXY, ctl,
        _Metric(), _Metric(), _Metric(), _Loop(),
    )
    mgr._deployment_config = NS(autoscaling_config=cfg, max_queued_requests=-1)
    return mgr, ctl


def config_json(kw):
    """The AutoscalingConfig fields the C side reads, with Ray's values (null where unset)."""
    c = AutoscalingConfig(**kw)
    keys = ["min_replicas", "initial_replicas", "max_replicas", "target_ongoing_requests",
            "metrics_interval_s", "look_back_period_s", "smoothing_factor",
            "upscale_smoothing_factor", "downscale_smoothing_factor", "upscaling_factor",
            "downscaling_factor", "downscale_delay_s", "downscale_to_zero_delay_s",
            "upscale_delay_s"]
    return {k: getattr(c, k) for k in keys}


def simulate(name, desc, cfg_kw, load, duration_s, capacity=None, direction=None,
             capacity_events=(), startup_s=0.5, max_ongoing=4, push_offset_s=0.0):
    """capacity_events: [(t, new_capacity)] target_capacity changes (a redeploy of the same apps)."""
    cfg = AutoscalingConfig(**cfg_kw)
    dep = DeploymentID(name="D", app_name="app")
    mgr, ctl = new_router(dep, cfg)
    state = AS.AutoscalingState(dep)

    def info(cap, d, changed):
        return NS(deployment_config=NS(autoscaling_config=cfg), target_capacity=cap,
                  target_capacity_direction=d, config_changed=lambda other: changed)

    target = state.register(info(capacity, direction, True), -1)
    initial_target = target
    state.update_running_replica_ids([])

    sample_every = round(min(0.5, cfg.metrics_interval_s) / 0.1)
    push_every = round(cfg.metrics_interval_s / 0.1)
    push_offset = round(push_offset_s / 0.1)
    assert abs(sample_every * 0.1 - min(0.5, cfg.metrics_interval_s)) < 1e-9
    assert abs(push_every * 0.1 - cfg.metrics_interval_s) < 1e-9

    rid = {}  # int id -> ReplicaID

    def RID(i):
        if i not in rid:
            rid[i] = ReplicaID(unique_id=f"r{i}", deployment_id=dep)
        return rid[i]

    replicas = []  # [id, ready_at]: starting and running
    next_id = 0
    prev_running_ids = None
    cap_events = {round(t / 0.1): c for t, c in capacity_events}
    cur_cap, cur_dir = capacity, direction

    segments, totals, decisions, events = [], [], [], []
    last_total, last_key = None, None
    n_steps = round(duration_s / 0.1)
    for step in range(n_steps):
        t = step / 10
        CLOCK.t = t
        flags = 0
        if step in cap_events:
            new_cap = cap_events[step]
            new_dir = calculate_target_capacity_direction(
                NS(target_capacity=cur_cap, applications=[NS(name="app")]),
                NS(target_capacity=new_cap, applications=[NS(name="app")]), cur_dir)
            cur_cap, cur_dir = new_cap, new_dir
            target = state.register(info(cur_cap, cur_dir, False), target)
            events.append([step, cur_cap, direction_name(cur_dir), target])
            # a new target from register is applied like an autoscaling decision
            while len(replicas) < target:
                replicas.append([next_id, t + startup_s])
                next_id += 1
            while len(replicas) > target:
                replicas.pop(max(range(len(replicas)), key=lambda i: (replicas[i][1], replicas[i][0])))
        # 1. the router's state
        running = sorted(r[0] for r in replicas if r[1] <= t + 1e-9)
        if running != prev_running_ids:
            mgr._update_running_replicas([NS(replica_id=RID(i)) for i in running])
            prev_running_ids = running
        n = load(t)
        assigned = min(n, len(running) * max_ongoing)
        counts = {}
        for k, i in enumerate(running):
            counts[i] = assigned // len(running) + (1 if k < assigned % len(running) else 0)
        d = mgr.num_requests_sent_to_replicas
        for key in list(d.keys()):
            i = int(key.unique_id[1:])
            if i not in counts:
                d[key] = 0  # stopped: its requests went back to the queue
        for i, c in counts.items():
            if c > 0 or RID(i) in d:
                d[RID(i)] = c
        mgr._update_running_replicas([NS(replica_id=RID(i)) for i in running])
        queued = n - assigned
        grew = queued > mgr.num_queued_requests
        mgr.num_queued_requests = queued
        if grew and not running and mgr.should_send_scaled_to_zero_optimized_push(0):
            mgr.push_autoscaling_metrics_to_controller()  # wrap_queued_request's cold-start push
            flags |= 1
        # 2. sample, 3. push (both tasks start at t=0; the record task runs first)
        if step % sample_every == 0:
            mgr._add_autoscaling_metrics_point()
        if step >= push_offset and (step - push_offset) % push_every == 0:
            mgr.push_autoscaling_metrics_to_controller()
        for rep in ctl.reports:
            state.record_request_metrics_for_handle(rep)
        ctl.reports.clear()
        # 4. the controller's decision
        total = state.get_total_num_requests()
        new_target = state.get_decision_num_replicas(target)
        router_dict = sorted([int(k.unique_id[1:]), v]
                             for k, v in mgr.num_requests_sent_to_replicas.items())
        ctl_running = [int(r.unique_id[1:]) for r in state._running_replicas]
        key = (queued, json.dumps(router_dict), json.dumps(ctl_running))
        if flags or key != last_key or not segments:
            segments.append([1, queued, router_dict, ctl_running, flags])
            last_key = key
        else:
            segments[-1][0] += 1
        if total != last_total:
            totals.append([step, total])
            last_total = total
        if new_target != target:
            decisions.append([step, new_target])
        target = new_target
        # apply the decision: start replicas, or stop the youngest (starting ones first)
        while len(replicas) < target:
            replicas.append([next_id, t + startup_s])
            next_id += 1
        while len(replicas) > target:
            replicas.pop(max(range(len(replicas)), key=lambda i: (replicas[i][1], replicas[i][0])))
        # STEP 7 of Ray's loop: the autoscaler learns the replicas running now
        state.update_running_replica_ids([RID(r[0]) for r in sorted(replicas) if r[1] <= t + 1e-9])

    return {
        "name": name,
        "description": desc,
        "ray_version": ray.__version__,
        "config": config_json(cfg_kw),
        "target_capacity": capacity,
        "capacity_direction": direction_name(direction),
        "dt": 0.1,
        "sample_every": sample_every,
        "push_every": push_every,
        "push_offset": push_offset,
        "steps": n_steps,
        "initial_target": initial_target,
        "capacity_events": events,
        "segments": segments,
        "totals": totals,
        "decisions": decisions,
    }


# ---- loads: concurrent requests as a function of time ----

def ramp(up_s, hold_s, down_s, lo=1, hi=32, start_s=5.0, tail=1):
    def f(t):
        if t < start_s:
            return lo
        t -= start_s
        if t < up_s:
            return lo + int((hi - lo) * t / up_s)
        t -= up_s
        if t < hold_s:
            return hi
        t -= hold_s
        if t < down_s:
            return hi - int((hi - lo) * t / down_s)
        return tail
    return f


def spike(at_s, width_s, hi, base=1):
    return lambda t: hi if at_s <= t < at_s + width_s else base


def decay_then_burst(t):
    if t < 10:
        return 12
    if t < 30:
        return max(0, int(12 * math.exp(-(t - 10) / 4)))  # slow decay to zero
    if t < 50:
        return 0
    if t < 50.3:
        return 1  # the first request after idle
    if t < 60:
        return 9
    return 0


def random_load(seed, duration_s, hi):
    rng = random.Random(seed)
    pts, v = {}, rng.randint(0, hi)
    steps = round(duration_s / 0.1)
    for s in range(steps):
        if rng.random() < 0.03:
            v = rng.randint(0, hi)
        pts[s] = v
    return lambda t: pts.get(round(t / 0.1), 0)


def traces():
    fast = dict(upscale_delay_s=1.0, downscale_delay_s=3.0, metrics_interval_s=1.0,
                look_back_period_s=5.0)
    yield simulate(
        "ramp_defaults",
        "1 -> 32 -> 1 concurrent requests; Ray's defaults (upscale 30 s, downscale 600 s, "
        "look-back 30 s, pushes every 10 s) with min 1, max 8",
        dict(min_replicas=1, max_replicas=8), ramp(60, 60, 60), 900.0)
    yield simulate(
        "ramp_fast",
        "1 -> 32 -> 1 with fast delays (up 1 s, down 3 s, look-back 5 s, push every 1 s), max 8",
        dict(min_replicas=1, max_replicas=8, **fast), ramp(20, 20, 20), 110.0)
    yield simulate(
        "spike_factors",
        "a spike 1 -> 40 for 3 s; upscaling_factor 2, downscaling_factor 0.5, push every 0.5 s",
        dict(min_replicas=1, max_replicas=16, upscaling_factor=2.0, downscaling_factor=0.5,
             upscale_delay_s=0.5, downscale_delay_s=2.0, metrics_interval_s=0.5,
             look_back_period_s=2.0), spike(5, 3, 40), 60.0, push_offset_s=0.2)
    yield simulate(
        "smoothing_deprecated",
        "ramp with smoothing_factor 0.5 and the deprecated upscale_/downscale_smoothing_factor",
        dict(min_replicas=1, max_replicas=10, smoothing_factor=0.5,
             upscale_smoothing_factor=1.7, downscale_smoothing_factor=0.3,
             upscale_delay_s=0.3, downscale_delay_s=1.5, metrics_interval_s=0.5,
             look_back_period_s=3.0, target_ongoing_requests=3.0), ramp(15, 10, 15), 60.0)
    yield simulate(
        "smoothing_only",
        "ramp with smoothing_factor 0.4 and no per-direction factor",
        dict(min_replicas=1, max_replicas=10, smoothing_factor=0.4, upscale_delay_s=0.0,
             downscale_delay_s=0.0, metrics_interval_s=0.5, look_back_period_s=1.0),
        ramp(15, 10, 15), 50.0)
    yield simulate(
        "decay_to_zero",
        "min 0, initial 2: a slow decay to zero, idle, the first request after idle (cold start "
        "push), a burst; downscale_to_zero_delay_s 2",
        dict(min_replicas=0, initial_replicas=2, max_replicas=4, upscale_delay_s=0.5,
             downscale_delay_s=1.0, downscale_to_zero_delay_s=2.0, metrics_interval_s=1.0,
             look_back_period_s=3.0), decay_then_burst, 80.0)
    yield simulate(
        "zero_no_to_zero_delay",
        "min 0 without downscale_to_zero_delay_s (1 -> 0 waits downscale_delay_s); "
        "upscaling_factor 2.5 makes a cold start ask for 3",
        dict(min_replicas=0, max_replicas=6, upscaling_factor=2.5, upscale_delay_s=0.2,
             downscale_delay_s=4.0, metrics_interval_s=0.5, look_back_period_s=2.0),
        decay_then_burst, 80.0)
    yield simulate(
        "capacity50",
        "target_capacity 50 (scaling up: the lower bound is the scaled initial_replicas), "
        "min 2, initial 4, max 9; a ramp",
        dict(min_replicas=2, initial_replicas=4, max_replicas=9, **fast), ramp(15, 15, 15),
        60.0, capacity=50.0, direction=TargetCapacityDirection.UP)
    yield simulate(
        "capacity_changes",
        "target_capacity changes during a ramp: null -> 50 (down) -> 25 -> 100 (up) -> null; "
        "min 1, initial 3, max 8",
        dict(min_replicas=1, initial_replicas=3, max_replicas=8, **fast), ramp(15, 25, 15), 70.0,
        capacity_events=[(10.0, 50.0), (20.0, 25.0), (30.0, 100.0), (45.0, None)])
    yield simulate(
        "random_a",
        "random load 0..30, random-ish config",
        dict(min_replicas=0, max_replicas=7, target_ongoing_requests=1.5, upscale_delay_s=0.7,
             downscale_delay_s=1.3, downscale_to_zero_delay_s=0.4, metrics_interval_s=0.3,
             look_back_period_s=1.7, upscaling_factor=1.3, downscaling_factor=0.7),
        random_load(1, 120, 30), 120.0, startup_s=0.3, max_ongoing=3)
    yield simulate(
        "random_b",
        "random load 0..60, push every 2 s with a 0.7 s offset, look-back 11 s",
        dict(min_replicas=2, max_replicas=12, target_ongoing_requests=4, upscale_delay_s=2.5,
             downscale_delay_s=5.0, metrics_interval_s=2.0, look_back_period_s=11.0,
             smoothing_factor=0.8), random_load(2, 150, 60), 150.0, startup_s=1.2,
        max_ongoing=5, push_offset_s=0.7)


def grid():
    """The formula, the 0-running rule, the capacity rounding and direction on many values."""
    cfgs = [
        dict(min_replicas=1, max_replicas=10),
        dict(min_replicas=0, max_replicas=20, upscaling_factor=2.0, downscaling_factor=0.5),
        dict(min_replicas=2, max_replicas=50, smoothing_factor=0.3, target_ongoing_requests=3.5),
        dict(min_replicas=0, max_replicas=100, upscale_smoothing_factor=0.1,
             downscale_smoothing_factor=1.9, target_ongoing_requests=0.7),
        dict(min_replicas=1, max_replicas=8, upscaling_factor=3.3, smoothing_factor=0.2),
    ]
    totals = sorted({i / 4 for i in range(0, 81)} | {i / 3 for i in range(0, 16)} |
                    {0.1 * i for i in range(0, 25)} | {1e-9, 2 - 1e-12, 1234.5})
    desired = []  # [config, running, min override, max override, [desired for each total]]
    for ci, kw in enumerate(cfgs):
        c = AutoscalingConfig(**kw)
        for running in (1, 2, 3, 5, 8, 13, 40):
            for omin, omax in ((None, None), (0, 3), (2, 6)):
                desired.append([ci, running, omin, omax,
                                [_calculate_desired_num_replicas(c, x, running, omin, omax)
                                 for x in totals]])
    policy = []  # one decision from a fresh state, 0 running included: [.., bounded decision, counter]
    for ci, kw in enumerate(cfgs):
        c = AutoscalingConfig(**kw)
        for running in (0, 1, 3):
            for cur in (0, 1, 2, 5):
                for total in (0.0, 0.5, 3.0, 17.0):
                    ctx = AS.AutoscalingContext(
                        deployment_id=None, deployment_name="D", app_name="app",
                        current_num_replicas=running, target_num_replicas=cur,
                        running_replicas=[], total_num_requests=total, queued_requests=None,
                        requests_per_replica=None, aggregated_metrics=None, raw_metrics=None,
                        capacity_adjusted_min_replicas=c.min_replicas,
                        capacity_adjusted_max_replicas=c.max_replicas, policy_state={},
                        last_scale_up_time=None, last_scale_down_time=None, current_time=None,
                        config=c)
                    v, st = replica_queue_length_autoscaling_policy(ctx)
                    # and the bounds, as AutoscalingState.get_decision_num_replicas applies them
                    state = AS.AutoscalingState(DeploymentID(name="D", app_name="app"))
                    state.register(NS(deployment_config=NS(autoscaling_config=c),
                                      target_capacity=None, target_capacity_direction=None), 1)
                    policy.append([ci, running, cur, total, state.apply_bounds(v),
                                   st.get("decision_counter")])
    capacity = []
    for n in list(range(0, 21)) + [33, 64, 99, 100, 101, 1000]:
        for cap in (None, 0.0, 0.5, 1.0, 10.0, 12.5, 25.0, 33.0, 33.3, 49.999, 50.0, 50.5, 66.7,
                    75.0, 99.9, 100.0, 0.1, 2.5, 7.5, 37.5, 62.5, 87.5):
            capacity.append([n, cap, get_capacity_adjusted_num_replicas(n, cap)])
    dirs = []
    for prev in (None, 0.0, 50.0, 100.0):
        for nxt in (None, 0.0, 50.0, 100.0):
            for prev_dir in (None, TargetCapacityDirection.UP, TargetCapacityDirection.DOWN):
                for same in (True, False):
                    cur = NS(target_capacity=prev, applications=[NS(name="a")])
                    new = NS(target_capacity=nxt, applications=[NS(name="a" if same else "b")])
                    d = calculate_target_capacity_direction(cur, new, prev_dir)
                    dirs.append([prev, nxt, direction_name(prev_dir), same, direction_name(d)])
                # no previous config at all
            d = calculate_target_capacity_direction(None, NS(target_capacity=nxt, applications=[]),
                                                    None)
            dirs.append(["none", nxt, None, False, direction_name(d)])
    return {
        "ray_version": ray.__version__,
        "configs": [config_json(kw) for kw in cfgs],
        "totals": totals,
        "desired": desired,
        "policy": policy,
        "capacity": capacity,
        "direction": dirs,
    }


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/data/autoscale"
    os.makedirs(out, exist_ok=True)
    names = []
    for tr in traces():
        path = os.path.join(out, tr["name"] + ".json")
        with open(path, "w") as f:
            json.dump(tr, f, separators=(",", ":"))
            f.write("\n")
        names.append(tr["name"])
        print(f"{path}: {tr['steps']} steps, {len(tr['segments'])} segments, "
              f"{len(tr['decisions'])} decisions: "
              + " ".join(f"{s / 10:g}s->{n}" for s, n in tr["decisions"][:12])
              + (" ..." if len(tr["decisions"]) > 12 else ""), file=sys.stderr)
    with open(os.path.join(out, "grid.json"), "w") as f:
        json.dump(grid(), f, separators=(",", ":"))
        f.write("\n")
    with open(os.path.join(out, "traces.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


if __name__ == "__main__":
    main()
