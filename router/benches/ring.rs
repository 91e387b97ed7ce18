//! Ring benchmark (`cargo bench -p modcdn-router`): over 100 000 synthetic
//! module keys with Zipf(1.1) traffic, for n = 3, 10, 30, 100 members —
//! share of keys moved on adding and removing a member next to the ideal,
//! max/mean load without and with bounded loads, and routing time per key
//! next to bare `hashring` lookups in the same run. Prints a table.

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::time::Instant;

use modcdn_router::load::LoadView;
use modcdn_router::plan::synthetic_keys;
use modcdn_router::ring::{Ring, RingMember};
use modcdn_router::route::{Member, RoutePolicy, Topology};
use modcdn_shared::module::RoutingKey;

/// Zipf(s) over ranks 0..n by inverse CDF, with a fixed xorshift seed.
struct Zipf {
    cdf: Vec<f64>,
    state: u64,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf, state: 0x9e37_79b9_7f4a_7c15 }
    }
    fn next(&mut self) -> usize {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let u = (self.state >> 11) as f64 / (1u64 << 53) as f64;
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

fn ring_members(n: usize) -> Vec<RingMember> {
    (0..n).map(|i| RingMember { id: format!("origin-{i}"), weight: 1.0 }).collect()
}

fn moved(a: &Ring, b: &Ring, keys: &[RoutingKey]) -> f64 {
    keys.iter().filter(|k| a.owner(k.as_str()) != b.owner(k.as_str())).count() as f64 / keys.len() as f64
}

fn max_over_mean(counts: &HashMap<String, u64>, n: usize) -> f64 {
    let max = counts.values().copied().max().unwrap_or(0) as f64;
    let mean = counts.values().sum::<u64>() as f64 / n as f64;
    max / mean
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it, and then a small smoke run checks that it works.
    let full = std::env::args().any(|a| a == "--bench");
    let (keys_n, requests_n) = if full { (100_000, 1_000_000) } else { (2_000, 20_000) };
    let keys = synthetic_keys(keys_n);
    let mut zipf = Zipf::new(keys_n, 1.1);
    let traffic: Vec<usize> = (0..requests_n).map(|_| zipf.next()).collect();
    println!("{keys_n} keys, {requests_n} requests with Zipf(1.1) popularity, 160 vnodes per member, c = 1.25");
    println!(
        "{:>4} | {:>9} {:>7} {:>6} | {:>9} {:>7} {:>6} | {:>8} {:>8} {:>8} {:>11} | {:>8} {:>8} {:>6}",
        "n",
        "add moved",
        "ideal",
        "ratio",
        "rm moved",
        "ideal",
        "ratio",
        "max/mean",
        "c=1.25",
        "c=1.10",
        "owner 1.25/1.10",
        "route ns",
        "bare ns",
        "ratio"
    );
    for n in [3usize, 10, 30, 100] {
        let base = Ring::new(&ring_members(n), 160);
        let added = Ring::new(&ring_members(n + 1), 160);
        let removed = Ring::new(&ring_members(n)[1..], 160);
        let (add, add_ideal) = (moved(&base, &added, &keys), 1.0 / (n + 1) as f64);
        let (rm, rm_ideal) = (moved(&base, &removed, &keys), 1.0 / n as f64);

        // Plain consistent hashing: every request to the key's owner.
        let mut plain: HashMap<String, u64> = HashMap::new();
        for &k in &traffic {
            *plain.entry(base.owner(keys[k].as_str()).unwrap_or("").to_string()).or_default() += 1;
        }

        // Bounded loads: a window of requests in flight (32 per member), each
        // routed with the live load, the oldest finishing as a new one starts;
        // with the default c = 1.25 and with c = 1.10.
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                id: format!("origin-{i}"),
                address: "h:1".into(),
                operator: "h:2".into(),
                region: "r".into(),
                weight: 1.0,
            })
            .collect();
        let bounded_run = |c: f64| -> (f64, f64) {
            let view = LoadView::default();
            let topo = Topology::new(
                &members,
                &HashMap::new(),
                RoutePolicy { bounded_load: c, ..RoutePolicy::default() },
                &view,
            );
            let window = 32 * n;
            let mut in_flight = VecDeque::with_capacity(window + 1);
            let mut counts: HashMap<String, u64> = HashMap::new();
            let mut local = 0u64;
            for &k in &traffic {
                let id = topo.route(&keys[k], "r").next().map(|m| m.id.clone()).unwrap_or_default();
                local += u64::from(Some(id.as_str()) == topo.owner_in(&keys[k], "r"));
                in_flight.push_back(view.begin(&id));
                *counts.entry(id).or_default() += 1;
                if in_flight.len() > window {
                    in_flight.pop_front();
                }
            }
            (max_over_mean(&counts, n), local as f64 / traffic.len() as f64)
        };
        let (bounded, owner_share) = bounded_run(1.25);
        let (bounded_110, owner_share_110) = bounded_run(1.10);
        let view = LoadView::default();
        let topo = Topology::new(&members, &HashMap::new(), RoutePolicy::default(), &view);

        // Lookup time: routing (ring walk + bounded-load check on live
        // atomics) against bare hashring `get` with its default hasher.
        let lookups: Vec<&RoutingKey> = traffic.iter().take(requests_n / 5).map(|&k| &keys[k]).collect();
        let mut bare: hashring::HashRing<(String, u32)> = hashring::HashRing::new();
        for i in 0..n {
            for r in 0..160u32 {
                bare.add((format!("origin-{i}"), r));
            }
        }
        let mut best_route = f64::MAX;
        let mut best_bare = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for k in &lookups {
                black_box(topo.route(k, "r").next());
            }
            best_route = best_route.min(t.elapsed().as_nanos() as f64 / lookups.len() as f64);
            let t = Instant::now();
            for k in &lookups {
                black_box(bare.get(&k.as_str()));
            }
            best_bare = best_bare.min(t.elapsed().as_nanos() as f64 / lookups.len() as f64);
        }
        println!(
            "{:>4} | {:>8.2}% {:>6.2}% {:>5.2}x | {:>8.2}% {:>6.2}% {:>5.2}x | {:>8.2} {:>8.2} {:>8.2} {:>5.1}%/{:>4.1}% | {:>8.0} {:>8.0} {:>5.2}x",
            n,
            add * 100.0,
            add_ideal * 100.0,
            add / add_ideal,
            rm * 100.0,
            rm_ideal * 100.0,
            rm / rm_ideal,
            max_over_mean(&plain, n),
            bounded,
            bounded_110,
            owner_share * 100.0,
            owner_share_110 * 100.0,
            best_route,
            best_bare,
            best_route / best_bare
        );
    }
    println!("max/mean: requests per member, plain ring and bounded loads (32 in flight per member); owner: share");
    println!("of requests served by the key's ring owner (cache locality); route: choosing the origin with bounded");
    println!("loads (ring walk + live load atomics), bare: hashring::get, same keys, best of 5");
    println!("targets: moved ≤ 1.1× ideal; bounded max/mean ≤ 1.10; route ≤ 2× bare hashring");
}
