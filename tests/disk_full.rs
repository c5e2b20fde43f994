//! The local backend on a disk that fills up: ingest answers 503 while it is
//! full (nothing acknowledged is lost), and once space returns the PSP's
//! retries are applied once. Needs a small filesystem: scripts/test.sh mounts
//! a tmpfs and names it in `PAYNOTIFY_TEST_SMALL_DISK`.

use std::io::Write;
use std::time::Duration;

use paynotify::app::AppOptions;
use paynotify_shared::PaymentStatus;
use support::app::spawn_app_tweaked;
use support::Kind;

#[macro_use]
mod support;

fn small_disk() -> Option<std::path::PathBuf> {
    match std::env::var("PAYNOTIFY_TEST_SMALL_DISK") {
        Ok(v) if v == "unavailable" => {
            eprintln!("disk_full: NOT RUN: scripts/test.sh could not mount a small filesystem");
            None
        }
        Ok(v) => Some(v.into()),
        Err(_) => panic!(
            "PAYNOTIFY_TEST_SMALL_DISK is not set: run scripts/test.sh, which mounts a small tmpfs, \
             or mount one yourself and name it"
        ),
    }
}

/// Fills the filesystem of `dir` until a write fails; returns the filler.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).and_then(|()| f.sync_all()).is_ok() {}
    // Smaller pieces until not even a page fits.
    let page = vec![0u8; 4096];
    while f.write_all(&page).and_then(|()| f.sync_all()).is_ok() {}
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_loses_nothing() {
    let Some(disk) = small_disk() else { return };
    let data = disk.join(ulid::Ulid::new().to_string());
    let t = spawn_app_tweaked(Kind::Local, AppOptions::all(), |c| {
        c.backend.data_dir = data.clone();
    })
    .await;
    t.sim.send(t.sim.purchase("before", 100)).await;
    t.wait_for_status("before", PaymentStatus::Paid).await;

    let filler = fill(&disk);
    let bodies: Vec<String> = (0..5)
        .map(|i| t.sim.purchase(&format!("full{i}"), 100))
        .collect();
    for body in &bodies {
        let status = t.post(body.clone()).await;
        assert_eq!(
            status, 503,
            "a notification was acknowledged on a full disk"
        );
    }
    std::fs::remove_file(filler).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The PSP's retries, now that there is space.
    for body in bodies {
        assert_eq!(t.post(body).await, 200);
    }
    for i in 0..5 {
        let s = t
            .wait_for_status(&format!("full{i}"), PaymentStatus::Paid)
            .await;
        assert_eq!(s.version, 1);
    }
    t.wait_until_drained().await;
    assert!(t.dlq_reasons().await.is_empty());
    let report = t.reconcile().await;
    assert!(report.is_clean(), "{:#?}", report.discrepancies);
}
