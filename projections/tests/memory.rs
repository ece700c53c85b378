//! What the folds that `eucora serve` keeps for every intent cost in memory.
//!
//! The metrics fold keeps a little of every intent ever requested (its app's number, state and
//! cost tariff), and the Merkle log's intent heads one entry each (and one in the index of the
//! last signed checkpoint): a serving process's memory grows with
//! the estate's history, so each entry has a budget, and this test fails when one outgrows it.
//! Allocation is deterministic, so the test counts bytes, not time: a counting allocator wraps
//! the system's, and this file holds one test, so nothing else allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use eucora_projections::event::{ApprovalBasis, DeploymentEvent, Gate, Ring};
use eucora_projections::fixtures::Script;
use eucora_projections::heads::Heads;
use eucora_projections::metrics::Metrics;

/// The system's allocator, counting the bytes held.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

/// The whole life of a costed change: requested under the default rates, approved by the CAB,
/// two reports in each of the five rings with a gate evaluation and a promotion between them,
/// completed: the most any intent keeps.
fn a_whole_rollout(n: u128) -> Vec<DeploymentEvent> {
    let mut s = Script::new(n);
    let mut created = s.created(&format!("app-{}", n % 1000), true);
    if let DeploymentEvent::DeploymentCreated(c) = &mut created {
        c.artifact_bytes = Some(2_000_000_000);
        c.cost_rates = Some(Box::default());
    }
    let mut events = vec![created, s.approved(1.0, ApprovalBasis::Cab, "carol")];
    for (i, ring) in Ring::ALL.into_iter().enumerate() {
        let hours = 2.0 + 10.0 * i as f64;
        events.push(s.deployed(hours, ring, 5, false));
        events.push(s.deployed(hours + 1.0, ring, 10, true));
        if let Some(next) = ring.next() {
            events.push(s.evaluated(hours + 2.0, ring, next, &[(Gate::SuccessRate, true)]));
            events.push(s.promoted(hours + 3.0, ring, next));
        }
    }
    events.push(s.completed(60.0, Ring::Global));
    events
}

/// Bytes per intent the metrics fold may keep: 1,537 before the cost meter was made compact, 709
/// before an ended rollout's forecaster was dropped, 594 before the fold kept a tariff instead of
/// a meter, numbered its apps and kept its intents in blocks; 236 now.
const METRICS_BUDGET: f64 = 260.0;
/// And the intent heads, held as the index of the last checkpoint signed: 256 before the index
/// was kept apart from the heads (the server held the heads, a tree over them made at each
/// signing, and a clone of both for evidence), 36 now.
const HEADS_BUDGET: f64 = 45.0;

#[test]
fn what_every_intent_keeps_in_memory_stays_within_its_budget() {
    // 50,000 fill the index maps three quarters, about the middle of their load range.
    const INTENTS: u128 = 50_000;
    let start = held();
    let (mut metrics, mut heads) = (Metrics::new(200), Heads::default());
    let mut position = 0;
    for n in 1..=INTENTS {
        for event in a_whole_rollout(n) {
            position += 1;
            metrics.apply(position, &event);
            heads.push(Some(event.meta().deployment_id));
        }
    }
    // The server keeps the heads as the index of the last checkpoint it signed (the heads that
    // changed since beside it, none here): it signs at start, so this is what a server holds.
    let index = heads.index();
    let with_heads = held();
    drop(heads);
    drop(index);
    let per_intent = |bytes: isize| bytes as f64 / INTENTS as f64;
    let (metrics_bytes, heads_bytes) =
        (per_intent(held() - start), per_intent(with_heads - held()));
    println!("per intent: metrics {metrics_bytes:.0} B, intent heads {heads_bytes:.0} B");
    assert!(
        metrics_bytes <= METRICS_BUDGET,
        "the metrics fold keeps {metrics_bytes:.0} B per intent, over its {METRICS_BUDGET} B budget"
    );
    assert!(
        heads_bytes <= HEADS_BUDGET,
        "the intent heads keep {heads_bytes:.0} B per intent, over their {HEADS_BUDGET} B budget"
    );
    // The fold saw every event (so nothing above was optimised away).
    let completed = format!("eucora_events_total{{event_type=\"DeploymentCompleted\"}} {INTENTS}");
    assert!(metrics.render().contains(&completed), "{completed}");
}
