//! Real engines on loopback UDP: they find each other, notice a member that stops
//! answering, record a leave as a leave, and keep out a member with another key.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gossip::{Gossip, Key, MemberId, Settings, Status, Tags, Timing};
use tokio::sync::watch;

fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

struct Agent {
    gossip: Gossip,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn agent(name: &str, key: Option<&str>) -> Agent {
    logs();
    // Port 0: the engine learns its port before it introduces itself, so bind first.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("free port");
    let addr: SocketAddr = probe.local_addr().expect("addr");
    drop(probe);
    let me = MemberId { addr, incarnation: 1, name: name.into(), tags: Tags { server: true, ..Tags::default() } };
    let settings = Settings {
        bind: addr,
        me,
        key: key.and_then(Key::from_cluster_key),
        timing: Timing {
            probe_period: Duration::from_millis(300),
            probe_rtt: Duration::from_millis(100),
            suspect_to_down: Duration::from_millis(500),
        },
    };
    let (stop, rx) = watch::channel(false);
    let (gossip, run) = gossip::start(settings, rx).await.expect("bind");
    Agent { gossip, stop, task: tokio::spawn(run) }
}

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < within, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

fn status(a: &Agent, name: &str) -> Option<Status> {
    a.gossip.members().get(name).map(|m| m.status)
}

#[tokio::test]
async fn members_join_fail_and_leave() {
    let key = Some("pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=");
    let (a, b, c) = (agent("a", key).await, agent("b", key).await, agent("c", key).await);
    b.gossip.announce(a.gossip.local_addr()).await;
    c.gossip.announce(a.gossip.local_addr()).await;
    wait_for("three alive members everywhere", Duration::from_secs(5), || {
        [&a, &b, &c].iter().all(|x| x.gossip.members().alive() == 3)
    })
    .await;

    // c stops answering, as a killed host does.
    c.task.abort();
    let took = wait_for("c failed on a and b", Duration::from_secs(5), || {
        status(&a, "c") == Some(Status::Failed) && status(&b, "c") == Some(Status::Failed)
    })
    .await;
    println!("failure detected in {took:?}");

    // b leaves gracefully: a records a leave, not a failure.
    b.gossip.leave().await;
    wait_for("b left on a", Duration::from_secs(3), || status(&a, "b") == Some(Status::Left)).await;
    assert_eq!(status(&b, "b"), Some(Status::Left));

    // force-leave moves the failed c to left; an alive member cannot be forced.
    a.gossip.force_leave("c").await.expect("c is failed");
    assert_eq!(status(&a, "c"), Some(Status::Left));
    let e = a.gossip.force_leave("a").await.expect_err("a is alive");
    assert!(e.contains("is alive"), "{e}");
    let e = a.gossip.force_leave("nobody").await.expect_err("unknown");
    assert!(e.contains("no member named \"nobody\""), "{e}");
    let _ = a.stop.send(true);
}

#[tokio::test]
async fn a_member_with_another_key_or_none_stays_out() {
    let key = Some("pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=");
    let (a, b) = (agent("a", key).await, agent("b", key).await);
    let wrong = agent("wrong", Some("AAECAwQFBgcICQoLDA0ODw==")).await;
    let plain = agent("plain", None).await;
    b.gossip.announce(a.gossip.local_addr()).await;
    wrong.gossip.announce(a.gossip.local_addr()).await;
    plain.gossip.announce(a.gossip.local_addr()).await;
    wait_for("a and b joined", Duration::from_secs(5), || {
        a.gossip.members().alive() == 2 && b.gossip.members().alive() == 2
    })
    .await;
    // Give the outsiders time for several announcements and probes, then look.
    for _ in 0..3 {
        wrong.gossip.announce(b.gossip.local_addr()).await;
        plain.gossip.announce(b.gossip.local_addr()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for x in [&a, &b] {
        let names: Vec<String> = x.gossip.members().iter().map(|m| m.id.name.clone()).collect();
        assert_eq!(names, ["a", "b"], "only the keyed members are in the pool");
    }
    assert_eq!(wrong.gossip.members().alive(), 1);
    assert_eq!(plain.gossip.members().alive(), 1);
}

#[tokio::test]
async fn a_second_member_with_a_taken_name_is_not_let_in() {
    let (a, b) = (agent("a", None).await, agent("b", None).await);
    b.gossip.announce(a.gossip.local_addr()).await;
    wait_for("a and b joined", Duration::from_secs(5), || a.gossip.members().alive() == 2).await;
    let b_addr = b.gossip.local_addr();
    let twin = agent("b", None).await;
    twin.gossip.announce(a.gossip.local_addr()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let held = a.gossip.members().get("b").map(|m| m.id.addr);
    assert_eq!(held, Some(b_addr), "the first holder of the name keeps it");
}
