//! What moves when membership changes: for each region, the share of keys
//! whose owner changes, next to the ideal (the least any assignment
//! proportional to weight could move), and per member what it gains and
//! loses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use modcdn_shared::module::{ModulePath, RoutingKey};

use crate::route::Topology;

/// `n` synthetic escaped module paths, the same every run.
pub fn synthetic_keys(n: usize) -> Vec<RoutingKey> {
    (0..n)
        .filter_map(|i| ModulePath::new(&format!("github.com/owner{}/module-{i}", i % 7919)).ok())
        .map(|m| RoutingKey::of(&m))
        .collect()
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct MemberChange {
    pub before: f64,
    pub after: f64,
    pub gained: f64,
    pub lost: f64,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct RegionPlan {
    pub moved: f64,
    pub ideal: f64,
    pub members: BTreeMap<String, MemberChange>,
}

fn weight_shares(t: &Topology, region: &str) -> BTreeMap<String, f64> {
    let ms: Vec<_> = t.members().filter(|m| m.region == region).collect();
    let total: f64 = ms.iter().map(|m| m.weight).sum();
    ms.iter().map(|m| (m.id.clone(), if total > 0.0 { m.weight / total } else { 0.0 })).collect()
}

/// The regions [`plan`] compares: those of either topology.
pub fn regions<'a>(from: &'a Topology, to: &'a Topology) -> BTreeSet<&'a str> {
    from.regions().chain(to.regions()).collect()
}

/// Compares the owners of `keys` in every region of either topology,
/// calling `done` with the number of keys compared since its last call.
pub fn plan(
    from: &Topology,
    to: &Topology,
    keys: &[RoutingKey],
    done: &mut dyn FnMut(u64),
) -> BTreeMap<String, RegionPlan> {
    const STEP: usize = 1 << 16;
    let mut out = BTreeMap::new();
    for region in regions(from, to) {
        let mut p = RegionPlan::default();
        let n = keys.len().max(1) as f64;
        let mut moved = 0usize;
        for (i, k) in keys.iter().enumerate() {
            if i % STEP == STEP - 1 {
                done(STEP as u64);
            }
            let a = from.owner_in(k, region);
            let b = to.owner_in(k, region);
            if let Some(a) = a {
                p.members.entry(a.to_string()).or_default().before += 1.0 / n;
            }
            if let Some(b) = b {
                p.members.entry(b.to_string()).or_default().after += 1.0 / n;
            }
            if a != b {
                moved += 1;
                if let Some(a) = a {
                    p.members.entry(a.to_string()).or_default().lost += 1.0 / n;
                }
                if let Some(b) = b {
                    p.members.entry(b.to_string()).or_default().gained += 1.0 / n;
                }
            }
        }
        done((keys.len() % STEP) as u64);
        p.moved = moved as f64 / n;
        // Total variation distance between the weight shares before and after.
        let (wa, wb) = (weight_shares(from, region), weight_shares(to, region));
        let ids: BTreeSet<&String> = wa.keys().chain(wb.keys()).collect();
        p.ideal =
            ids.iter().map(|id| (wa.get(*id).unwrap_or(&0.0) - wb.get(*id).unwrap_or(&0.0)).abs()).sum::<f64>() / 2.0;
        if wa.is_empty() || wb.is_empty() {
            p.ideal = if wa.is_empty() && wb.is_empty() { 0.0 } else { 1.0 };
        }
        out.insert(region.to_string(), p);
    }
    out
}

/// The plan as a table.
pub fn render(plans: &BTreeMap<String, RegionPlan>, keys: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{keys} synthetic module keys; shares are of each region's keys\n");
    for (region, p) in plans {
        let ratio = if p.ideal > 0.0 { format!("{:.2}× ideal", p.moved / p.ideal) } else { "-".into() };
        let _ = writeln!(
            s,
            "region {region}: {:.2}% of keys move (ideal {:.2}%, {ratio})",
            p.moved * 100.0,
            p.ideal * 100.0
        );
        let _ = writeln!(s, "  {:<20} {:>8} {:>8} {:>8} {:>8}", "member", "before", "after", "gains", "loses");
        for (id, c) in &p.members {
            let _ = writeln!(
                s,
                "  {:<20} {:>7.2}% {:>7.2}% {:>7.2}% {:>7.2}%",
                id,
                c.before * 100.0,
                c.after * 100.0,
                c.gained * 100.0,
                c.lost * 100.0
            );
        }
    }
    s
}

/// The plan as a picture (SVG): per region, each member's share of keys
/// before (grey) and after (blue), and what moves.
pub fn svg(plans: &BTreeMap<String, RegionPlan>, keys: usize) -> String {
    const W: f64 = 720.0;
    const LABEL: f64 = 160.0;
    const BAR: f64 = 14.0;
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut body = String::new();
    let mut y = 40.0;
    for (region, p) in plans {
        let _ = writeln!(
            body,
            "<text x=\"10\" y=\"{y}\" font-weight=\"bold\">region {}: {:.2}% of keys move (ideal {:.2}%)</text>",
            esc(region),
            p.moved * 100.0,
            p.ideal * 100.0
        );
        y += 12.0;
        let top = p.members.values().flat_map(|c| [c.before, c.after]).fold(0.0f64, f64::max).max(1e-9);
        for (id, c) in &p.members {
            let width = |share: f64| (W - LABEL - 140.0) * share / top;
            let _ = writeln!(
                body,
                "<text x=\"10\" y=\"{:.0}\">{}</text>\
                 <rect x=\"{LABEL}\" y=\"{:.0}\" width=\"{:.1}\" height=\"{BAR}\" fill=\"#bbb\"><title>{} before: {:.2}%</title></rect>\
                 <rect x=\"{LABEL}\" y=\"{:.0}\" width=\"{:.1}\" height=\"{BAR}\" fill=\"#2f6fde\"><title>{} after: {:.2}%</title></rect>\
                 <text x=\"{:.0}\" y=\"{:.0}\">{:.1}% → {:.1}%</text>",
                y + 2.0 * BAR - 4.0,
                esc(id),
                y + 4.0,
                width(c.before),
                esc(id),
                c.before * 100.0,
                y + 4.0 + BAR,
                width(c.after),
                esc(id),
                c.after * 100.0,
                LABEL + width(c.before.max(c.after)) + 8.0,
                y + 2.0 * BAR - 4.0,
                c.before * 100.0,
                c.after * 100.0,
            );
            y += 2.0 * BAR + 10.0;
        }
        y += 20.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\">{keys} synthetic module keys; grey: share before, blue: after</text>\n{body}</svg>\n",
        y
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::{Member, RoutePolicy};
    use std::collections::HashMap;

    fn topo(ids: &[&str]) -> Topology {
        let ms: Vec<Member> = ids
            .iter()
            .map(|id| Member {
                id: id.to_string(),
                address: "h:1".into(),
                operator: "h:2".into(),
                region: "r".into(),
                weight: 1.0,
            })
            .collect();
        Topology::new(&ms, &HashMap::new(), RoutePolicy::default(), &crate::load::LoadView::default())
    }

    #[test]
    fn adding_one_of_four_moves_about_a_fifth_all_to_it() {
        let keys = synthetic_keys(50_000);
        let mut compared = 0;
        let p =
            &plan(&topo(&["a", "b", "c", "d"]), &topo(&["a", "b", "c", "d", "e"]), &keys, &mut |n| compared += n)["r"];
        assert_eq!(compared, 50_000, "progress counts every key of the one region");
        assert!((p.ideal - 0.2).abs() < 1e-9, "{}", p.ideal);
        assert!(p.moved <= 1.1 * p.ideal && p.moved >= 0.9 * p.ideal, "moved {}", p.moved);
        assert!((p.members["e"].gained - p.moved).abs() < 1e-9);
        assert!(p.members.iter().filter(|(id, _)| *id != "e").all(|(_, c)| c.gained == 0.0));
        assert!(render(&plan(&topo(&["a"]), &topo(&["a", "b"]), &keys, &mut |_| {}), keys.len()).contains("region r"));
    }

    #[test]
    fn the_picture_has_a_pair_of_bars_per_member_sized_by_share() {
        let keys = synthetic_keys(20_000);
        let picture = svg(&plan(&topo(&["a", "b"]), &topo(&["a", "b", "<c>"]), &keys, &mut |_| {}), keys.len());
        assert!(picture.starts_with("<svg") && picture.trim_end().ends_with("</svg>"));
        assert_eq!(picture.matches("<rect").count(), 6, "before and after for each of three members");
        assert!(picture.contains("&lt;c&gt;") && !picture.contains("<c>"), "ids are escaped");
        // The new member had no keys before: a zero-width grey bar.
        assert!(picture.contains("width=\"0.0\" height=\"14\" fill=\"#bbb\"><title>&lt;c&gt; before: 0.00%"));
    }
}
