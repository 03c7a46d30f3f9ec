//! Out of file descriptors: the accept loop backs off, neither spinning nor
//! dying, and serves again once descriptors are free.
//!
//! The test re-runs this test binary in a child process whose open-file
//! limit is lowered with the shell's `ulimit` (the limit can only be
//! lowered, and a lowered limit must not touch the other tests), and checks
//! the child's report.

use admit::Limiter;
use admit_tcp::AdmitListener;
use socket2::{Domain, Socket, Type};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const CHILD_ENV: &str = "ADMIT_TCP_EMFILE_CHILD";
const CHILD_LIMIT: u32 = 256;
/// How long the child keeps every descriptor taken.
const EXHAUSTED_FOR: Duration = Duration::from_millis(700);

#[test]
fn accept_backs_off_on_emfile_and_serves_again() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {CHILD_LIMIT} && exec \"$0\" \"$@\""))
        .arg(&exe)
        .args([
            "emfile_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("child stdout:\n{stdout}\nchild stderr:\n{stderr}");
    assert!(out.status.success(), "the child failed");
    assert!(stdout.contains("emfile child: ok"), "the child did not run");
    assert!(stdout.contains("1 passed"), "the child did not run");
}

/// Process CPU time (user + system) from an already open `/proc/self/stat`:
/// opening it while descriptors are exhausted would fail.
fn cpu_time(stat: &mut File) -> Duration {
    let mut text = String::new();
    stat.seek(SeekFrom::Start(0)).unwrap();
    stat.read_to_string(&mut text).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields, in clock ticks of 1/100 s.
    let rest = &text[text.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
#[ignore = "runs only as the child of accept_backs_off_on_emfile_and_serves_again"]
fn emfile_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        // Run with --include-ignored outside its parent: it must not lower
        // this process's descriptors; the parent test covers it.
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(child());
}

async fn child() {
    let mut stat = File::open("/proc/self/stat").unwrap();
    let limiter = Limiter::new(1000);
    let mut listener = AdmitListener::bind("127.0.0.1:0", limiter.clone())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = listener.stats();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener
                .accept()
                .await
                .expect("the accept loop never fails");
            let _ = conn.write_all(b"hi\n").await;
        }
    });

    let connect = |client: &Socket| {
        client.connect(&addr.into()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
    };
    let read_hi = |client: &Socket| {
        let mut buf = [0u8; 3];
        (&*client).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi\n");
    };
    let new_client = || {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), 0)).into())
            .unwrap();
        s
    };

    // Served while descriptors are plentiful.
    let first = new_client();
    connect(&first);
    tokio::task::block_in_place(|| read_hi(&first));
    drop(first);
    assert_eq!(stats.accept_errors(), 0);
    // The server's side of it must be closed too, or its descriptor would
    // come free in the middle of the starvation. Its permit is released
    // only after its socket is closed.
    let start = Instant::now();
    while limiter.in_use() != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the first connection never closed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // Take every descriptor left. The client socket is made first: its
    // connect completes in the kernel's backlog without a new descriptor,
    // but accepting it needs one.
    let starved = new_client();
    let mut hog = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("unexpected error while exhausting descriptors: {e}"),
        }
    }
    connect(&starved);

    // The loop meets EMFILE...
    let start = Instant::now();
    while stats.accept_errors() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "accept() never failed"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // ...and from then on, while still starved, backs off instead of spinning.
    let (errors0, cpu0, t0) = (stats.accept_errors(), cpu_time(&mut stat), Instant::now());
    tokio::time::sleep(EXHAUSTED_FOR).await;
    let (errors, cpu, window) = (
        stats.accept_errors() - errors0,
        cpu_time(&mut stat) - cpu0,
        t0.elapsed(),
    );
    assert_eq!(limiter.in_use(), 0, "nothing was admitted while starved");

    // Free the descriptors: the waiting client is served within a second.
    drop(hog);
    let freed = Instant::now();
    tokio::task::block_in_place(|| read_hi(&starved));
    let served_after = freed.elapsed();
    println!(
        "emfile child: accept() failures in {window:?} starved: {errors}, cpu {cpu:?}, \
         served {served_after:?} after descriptors were freed"
    );
    // 1, 2, 4 ... 512 ms: about ten retries in 700 ms; a spinning loop makes
    // hundreds of thousands.
    assert!((3..=16).contains(&errors), "{errors} accept() failures");
    assert!(
        cpu < Duration::from_millis(200),
        "cpu {cpu:?} while starved"
    );
    assert!(
        served_after < Duration::from_secs(1),
        "served {served_after:?} after"
    );

    // And it keeps serving.
    let after = new_client();
    connect(&after);
    tokio::task::block_in_place(|| read_hi(&after));
    println!("emfile child: ok");
}
