//! Ring and routing properties over random memberships (proptest).

use std::collections::HashMap;

use modcdn_router::load::LoadView;
use modcdn_router::ring::{Ring, RingMember};
use modcdn_router::route::{Member, RoutePolicy, Topology};
use proptest::prelude::*;

fn keys() -> Vec<String> {
    (0..3000).map(|i| format!("example.com/org{}/mod{i}", i % 61)).collect()
}

fn members_strategy() -> impl Strategy<Value = Vec<RingMember>> {
    prop::collection::btree_map("[a-z]{1,8}-[0-9]{1,3}", 1u32..4, 2..12)
        .prop_map(|m| m.into_iter().map(|(id, w)| RingMember { id, weight: w as f64 }).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn insertion_order_does_not_matter(members in members_strategy(), seed in any::<u64>()) {
        let mut shuffled = members.clone();
        let n = shuffled.len();
        for i in (1..n).rev() {
            shuffled.swap(i, (seed.rotate_left(i as u32) as usize) % (i + 1));
        }
        let (a, b) = (Ring::new(&members, 160), Ring::new(&shuffled, 160));
        for k in keys() {
            prop_assert_eq!(a.candidates(&k, 3), b.candidates(&k, 3));
        }
    }

    #[test]
    fn removal_moves_only_the_removed_members_keys(members in members_strategy(), pick in any::<prop::sample::Index>()) {
        let gone = pick.get(&members).id.clone();
        let rest: Vec<RingMember> = members.iter().filter(|m| m.id != gone).cloned().collect();
        let (before, after) = (Ring::new(&members, 160), Ring::new(&rest, 160));
        for k in keys() {
            let (b, a) = (before.owner(&k), after.owner(&k));
            if b != Some(gone.as_str()) {
                prop_assert_eq!(b, a);
            } else {
                // The key goes to the next member in ring order.
                prop_assert_eq!(a, before.candidates(&k, 2).get(1).copied());
            }
        }
    }

    #[test]
    fn addition_moves_keys_only_to_the_new_member(members in members_strategy()) {
        let mut more = members.clone();
        more.push(RingMember { id: "newcomer-0".into(), weight: 1.0 });
        let (before, after) = (Ring::new(&members, 160), Ring::new(&more, 160));
        for k in keys() {
            let (b, a) = (before.owner(&k), after.owner(&k));
            prop_assert!(a == b || a == Some("newcomer-0"));
        }
    }

    #[test]
    fn candidates_are_distinct_and_bounded_loads_hold(members in members_strategy(), c in 1.0f64..2.0) {
        let ms: Vec<Member> = members
            .iter()
            .map(|m| Member { id: m.id.clone(), address: "h:1".into(), operator: "h:2".into(), region: "r".into(), weight: m.weight })
            .collect();
        let view = LoadView::default();
        let topo = Topology::new(&ms, &HashMap::new(), RoutePolicy { bounded_load: c, max_candidates: 20, ..RoutePolicy::default() }, &view);
        let mut held = Vec::new();
        for (i, k) in keys().iter().take(600).enumerate() {
            let key = modcdn_shared::module::RoutingKey::of(&modcdn_shared::module::ModulePath::new(k).expect("module path"));
            let cands: Vec<&Member> = topo.route(&key, "r").collect();
            let mut ids: Vec<&str> = cands.iter().map(|m| m.id.as_str()).collect();
            ids.sort();
            ids.dedup();
            prop_assert_eq!(ids.len(), cands.len(), "distinct");
            prop_assert_eq!(cands.len(), ms.len().min(20));
            held.push(view.begin(&cands[0].id));
            let avg = (i + 1) as f64 / ms.len() as f64;
            for m in &ms {
                prop_assert!(view.load(&m.id) as f64 <= (c * avg).ceil() + 1e-9, "{} above ⌈c × avg⌉", m.id);
            }
        }
    }
}
