//! Routing a key: region → that region's ring → bounded loads → origin,
//! with distinct failover candidates. A `Topology` is an immutable snapshot
//! (swapped whole when membership changes); the live numbers come from a
//! [`LoadView`].

use std::collections::{BTreeMap, HashMap};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use modcdn_shared::module::RoutingKey;

use crate::load::{LoadView, MemberStats, RegionStats};
use crate::ring::{Ring, RingMember, Walk};

/// An origin as membership describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    /// The origin's GOPROXY listener, `host:port`.
    pub address: String,
    /// Its operator listener, `host:port`.
    pub operator: String,
    pub region: String,
    pub weight: f64,
}

/// How routing behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutePolicy {
    /// Bounded-load factor c: a member above c × average load is passed over.
    pub bounded_load: f64,
    /// Virtual nodes per unit of weight.
    pub vnodes_per_weight: u32,
    /// Most candidates returned (the chosen one plus failovers).
    pub max_candidates: usize,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy { bounded_load: 1.25, vnodes_per_weight: crate::ring::DEFAULT_VNODES_PER_WEIGHT, max_candidates: 3 }
    }
}

struct RegionRing {
    ring: Ring,
    /// The ring's members and their live numbers, index for index.
    members: Vec<Member>,
    stats: Vec<Arc<MemberStats>>,
    totals: Arc<RegionStats>,
    fallback: Vec<String>,
}

/// Members, per-region rings and region fallbacks, bound to a [`LoadView`].
pub struct Topology {
    members: HashMap<String, Member>,
    regions: BTreeMap<String, RegionRing>,
    policy: RoutePolicy,
}

impl Topology {
    /// `fallbacks[region]` lists the regions to try, in order, when `region`
    /// has no healthy member; every other region follows, by name. The
    /// view's region totals are set to this membership.
    pub fn new(
        members: &[Member],
        fallbacks: &HashMap<String, Vec<String>>,
        policy: RoutePolicy,
        view: &LoadView,
    ) -> Topology {
        let by_id: HashMap<String, Member> = members.iter().map(|m| (m.id.clone(), m.clone())).collect();
        let mut by_region: BTreeMap<String, Vec<RingMember>> = BTreeMap::new();
        for m in members {
            by_region.entry(m.region.clone()).or_default().push(RingMember { id: m.id.clone(), weight: m.weight });
        }
        for region in fallbacks.keys() {
            by_region.entry(region.clone()).or_default();
        }
        let placement: Vec<(&str, &str)> = members.iter().map(|m| (m.id.as_str(), m.region.as_str())).collect();
        view.assign(&placement);
        let regions = by_region
            .into_iter()
            .map(|(name, ms)| {
                let ring = Ring::new(&ms, policy.vnodes_per_weight);
                let members = ring.members().iter().filter_map(|m| by_id.get(&m.id).cloned()).collect();
                let stats = ring.members().iter().map(|m| view.member(&m.id)).collect();
                let fallback = fallbacks.get(&name).cloned().unwrap_or_default();
                let totals = view.region(&name);
                (name, RegionRing { ring, members, stats, totals, fallback })
            })
            .collect();
        Topology { members: by_id, regions, policy }
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }

    pub fn policy(&self) -> &RoutePolicy {
        &self.policy
    }

    /// The owner of `key` in `region`'s ring, ignoring load and health
    /// (what `plan` compares).
    pub fn owner_in(&self, key: &RoutingKey, region: &str) -> Option<&str> {
        self.regions.get(region)?.ring.owner(key.as_str())
    }

    /// Where to send `key` for a client of `region`, best first, at most
    /// `max_candidates`: first the healthy members whose load is within the
    /// bound, in ring order (so the owner whenever it is not overloaded),
    /// then those above it by Peak-EWMA latency. A region without a healthy
    /// member hands over to its fallbacks, then to every other region.
    ///
    /// Lazy: the first candidate costs one ring lookup and a few atomic
    /// reads; failover candidates are found only when asked for.
    pub fn route<'a>(&'a self, key: &RoutingKey, region: &str) -> Candidates<'a> {
        let chosen = self.regions.get(region).filter(|r| r.totals.healthy.load(Ordering::Relaxed) > 0).or_else(|| {
            let own = self.regions.get(region);
            let fallbacks = own.into_iter().flat_map(|r| r.fallback.iter().map(String::as_str));
            fallbacks
                .chain(self.regions.keys().map(String::as_str))
                .filter_map(|name| self.regions.get(name))
                .find(|r| r.totals.healthy.load(Ordering::Relaxed) > 0)
        });
        let Some(r) = chosen else {
            return Candidates { region: None, walk: None, cap: 0, left: 0, over: Vec::new(), draining: true };
        };
        // Mirrokni, Thorup, Zadimoghaddam: capacity ⌈c·(m+1)/n⌉ for m
        // requests in flight over n members, counting the new one.
        let healthy = r.totals.healthy.load(Ordering::Relaxed).max(1);
        let total = r.totals.load.load(Ordering::Relaxed).max(0);
        let cap = (self.policy.bounded_load * (total + 1) as f64 / healthy as f64).ceil() as i64;
        Candidates {
            region: Some(r),
            walk: Some(r.ring.walk(key.as_str())),
            cap,
            left: self.policy.max_candidates,
            over: Vec::new(),
            draining: false,
        }
    }
}

/// See [`Topology::route`].
pub struct Candidates<'a> {
    region: Option<&'a RegionRing>,
    walk: Option<Walk<'a>>,
    cap: i64,
    left: usize,
    /// Members met above the bound, yielded after the walk.
    over: Vec<usize>,
    draining: bool,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Member;

    fn next(&mut self) -> Option<&'a Member> {
        let r = self.region?;
        if self.left == 0 {
            return None;
        }
        if !self.draining {
            if let Some(walk) = self.walk.as_mut() {
                for i in walk.by_ref() {
                    let s = &r.stats[i];
                    if !s.is_healthy() {
                        continue;
                    }
                    if s.load() < self.cap {
                        self.left -= 1;
                        return r.members.get(i);
                    }
                    self.over.push(i);
                }
            }
            self.draining = true;
            // Reversed, so that popping yields the lowest latency first.
            self.over.sort_by(|a, b| r.stats[*b].ewma_us().total_cmp(&r.stats[*a].ewma_us()));
        }
        let i = self.over.pop()?;
        self.left -= 1;
        r.members.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rk(module: &str) -> RoutingKey {
        RoutingKey::of(&modcdn_shared::module::ModulePath::new(module).expect("module path"))
    }
    use crate::load::HealthPolicy;

    fn member(id: &str, region: &str) -> Member {
        Member {
            id: id.into(),
            address: format!("{id}:1"),
            operator: format!("{id}:2"),
            region: region.into(),
            weight: 1.0,
        }
    }

    fn topology(view: &LoadView) -> Topology {
        let members = vec![
            member("cn1", "cn"),
            member("cn2", "cn"),
            member("us1", "us"),
            member("us2", "us"),
            member("us3", "us"),
        ];
        let fallbacks =
            HashMap::from([("cn".to_string(), vec!["us".to_string()]), ("eu".to_string(), vec!["us".to_string()])]);
        Topology::new(&members, &fallbacks, RoutePolicy::default(), view)
    }

    #[test]
    fn routes_within_the_region_and_falls_back_when_it_is_down() {
        let view = LoadView::new(HealthPolicy { fall: 1, rise: 1, ..HealthPolicy::default() });
        let t = topology(&view);
        let c = t.route(&rk("golang.org/x/mod"), "cn").collect::<Vec<_>>();
        assert!(c.iter().all(|m| m.region == "cn") && c.len() == 2, "{c:?}");
        assert_eq!(c[0].id, t.owner_in(&rk("golang.org/x/mod"), "cn").unwrap_or(""));
        // eu has no members: its fallback us serves.
        assert!(t.route(&rk("golang.org/x/mod"), "eu").all(|m| m.region == "us"));
        // The whole cn region down: us serves cn clients.
        view.check_result("cn1", false);
        view.check_result("cn2", false);
        let c = t.route(&rk("golang.org/x/mod"), "cn").collect::<Vec<_>>();
        assert!(!c.is_empty() && c.iter().all(|m| m.region == "us"), "{c:?}");
        // One member down: its keys go to the next in ring order, others stay.
        view.check_result("cn1", true);
        let c = t.route(&rk("golang.org/x/mod"), "cn").collect::<Vec<_>>();
        assert_eq!(c.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), vec!["cn1"]);
        assert!(t.route(&rk("x.y/z"), "nowhere").next().is_some(), "an unknown region still gets an origin");
    }

    #[test]
    fn bounded_loads_keep_every_member_within_c_times_average() {
        // Sequential arrivals, no departures, all keys on one hot module:
        // without bounds one member takes everything; with them no member
        // exceeds ⌈c × average⌉.
        let members: Vec<Member> = (0..10).map(|i| member(&format!("o{i}"), "r")).collect();
        let view = LoadView::new(HealthPolicy::default());
        let t = Topology::new(
            &members,
            &HashMap::new(),
            RoutePolicy { max_candidates: 10, ..RoutePolicy::default() },
            &view,
        );
        let mut held = Vec::new();
        for i in 0..1000 {
            let key = if i % 10 < 7 { "hot.example/module".to_string() } else { format!("k{i}.example/m") };
            let chosen: Vec<&Member> = t.route(&rk(&key), "r").collect();
            held.push(view.begin(&chosen[0].id));
            let loads: Vec<i64> = members.iter().map(|m| view.load(&m.id)).collect();
            let avg = (i + 1) as f64 / members.len() as f64;
            let max = *loads.iter().max().unwrap_or(&0);
            assert!(max as f64 <= (1.25 * avg).ceil(), "step {i}: max {max} avg {avg:.2}");
        }
    }
}
