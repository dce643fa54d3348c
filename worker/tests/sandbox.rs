//! Network isolation, operator networks and the sandbox, through the real engine in real Docker.
//! Traffic goes only to containers, networks and listeners these tests create.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::{checkout, engine, job, leftovers, run_with, Capture, OWNER};
use kiln_buildspec::routing::Status::*;
use kiln_tests::{docker, listener_script, start_listener, unique_name};
use kiln_worker::docker::{Attachment, Mount, Sandbox};
use tokio_util::sync::CancellationToken;

const PORT: u16 = 7777;
const GREETING: &str = "hello from the listener";

/// Tries `$TARGET:7777` (a name or an address) for 5 s; prints the greeting or UNREACHABLE.
const PROBE: &str = "version: 0.2\nphases:\n  build:\n    commands:\n      - timeout 5 bash -c 'exec 3<>/dev/tcp/$TARGET/$TARGET_PORT; head -n1 <&3' || echo UNREACHABLE\n";

/// A Docker network the test made; removed (after its containers) when dropped.
struct TestNetwork {
    name: String,
    containers: Vec<String>,
}

impl TestNetwork {
    fn new(internal: bool) -> TestNetwork {
        let name = unique_name("net");
        let mut args = vec!["network", "create", "--label", "kiln-test=1"];
        if internal {
            args.push("--internal");
        }
        args.push(&name);
        docker(&args);
        TestNetwork {
            name,
            containers: Vec::new(),
        }
    }

    /// The host's address on this network (its bridge's gateway).
    fn gateway(&self) -> String {
        docker(&[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            &self.name,
        ])
    }

    /// Starts a TCP listener container known as `alias` here; returns its address once it
    /// listens.
    fn listener(&mut self, alias: &str) -> String {
        let name = start_listener(&self.name, alias, PORT, GREETING);
        self.containers.push(name.clone());
        docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &name,
        ])
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .output();
    }
}

/// A listener of the test process itself on `address`, greeting every connection.
fn host_listener(address: &str) -> u16 {
    let listener = TcpListener::bind((address, 0)).expect("bind on the test network's gateway");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let _ = writeln!(stream, "{GREETING}");
        }
    });
    port
}

fn probe(target: &str, port: u16) -> impl FnOnce(&mut kiln_worker::BuildJob) {
    let vars = [
        ("TARGET".to_string(), target.to_string()),
        ("TARGET_PORT".to_string(), port.to_string()),
    ];
    move |job| job.env_overrides.extend(vars)
}

fn attached(name: &str, network: &TestNetwork, aliases: &[&str], internal: bool) -> Sandbox {
    Sandbox {
        networks: vec![Attachment {
            name: name.to_string(),
            docker_network: network.name.clone(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            internal,
        }],
        ..Default::default()
    }
}

fn reached(log: &str) -> bool {
    match (log.contains(GREETING), log.contains("\nUNREACHABLE\n")) {
        (true, false) => true,
        (false, true) => false,
        _ => panic!("the probe neither reached nor failed:\n{log}"),
    }
}

#[tokio::test]
async fn concurrent_builds_cannot_reach_each_other() {
    let listen = format!(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - perl -MIO::Socket::INET -e '{}'\n",
        listener_script(PORT, GREETING)
    );
    let dir = checkout(&listen, &[]);
    let listener_job = job(dir.path());
    let listener_id = listener_job.build_id.clone();
    let stop = CancellationToken::new();
    let capture = Capture::default();
    let running = tokio::spawn(kiln_worker::run_build(
        engine().await,
        listener_job,
        Box::new(capture.clone()),
        stop.clone(),
        OWNER,
    ));
    while !capture.text().contains("\nlistening\n") {
        assert!(!running.is_finished(), "{}", capture.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let filter = format!("label=kiln.build-id={listener_id}");
    let container = docker(&["ps", "-q", "--filter", &filter]);
    let address = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &container,
    ]);
    // Positive control: the listener is up at that address (the host reaches every bridge).
    let mut greeting = String::new();
    std::net::TcpStream::connect((address.as_str(), PORT))
        .expect("the listening build is reachable from the host")
        .read_to_string(&mut greeting)
        .expect("greeting");
    assert_eq!(greeting.trim(), GREETING);

    // Besides Docker's own chains, rules keep every build bridge from every other bridge.
    for (from, to) in [
        ("kiln+", "kiln+"),
        ("kiln+", "br-+"),
        ("br-+", "kiln+"),
        ("kiln+", "docker0"),
        ("docker0", "kiln+"),
    ] {
        let rule = Command::new("iptables")
            .args(["-C", "DOCKER-USER", "-i", from, "-o", to, "-j", "DROP"])
            .status()
            .expect("iptables");
        assert!(
            rule.success(),
            "the engine added the build-isolation firewall rule {from} -> {to}"
        );
    }
    let other = run_with(PROBE, &[], probe(&address, PORT)).await;
    assert_eq!(other.status(), Succeeded, "{}", other.log);
    assert!(
        !reached(&other.log),
        "a build reached another build's container at {address}:\n{}",
        other.log
    );

    stop.cancel();
    let record = running.await.expect("listener build");
    assert_eq!(record.build_status, Stopped);
    assert!(leftovers(&listener_id).await.is_empty());
}

#[tokio::test]
async fn an_attached_build_reaches_a_service_by_alias_and_an_unattached_one_does_not() {
    let mut services = TestNetwork::new(false);
    let address = services.listener("db");

    let on = |job: &mut kiln_worker::BuildJob| {
        probe("db", PORT)(job);
        job.sandbox = attached("services", &services, &["app-build"], false);
    };
    let probe_and_alias = format!("{PROBE}      - getent hosts app-build\n");
    let ran = run_with(&probe_and_alias, &[], on).await;
    assert_eq!(ran.status(), Succeeded, "{}", ran.log);
    assert!(reached(&ran.log), "{}", ran.log);
    let interfaces = &ran.record.network_interfaces;
    assert_eq!(
        interfaces.len(),
        2,
        "own network and services: {interfaces:?}"
    );
    let own = &interfaces[0];
    assert!(
        own.network.is_empty() && !own.ip_address.is_empty(),
        "{own:?}"
    );
    let service = &interfaces[1];
    assert_eq!(service.network, "services");
    assert_eq!(service.docker_network, services.name);
    assert_eq!(service.aliases, ["app-build"]);
    assert!(!service.ip_address.is_empty());
    ran.assert_log(&format!("Attached to network services ({})", services.name));
    // The alias names the build on the service network.
    ran.assert_log(&format!("{} ", service.ip_address));
    assert!(leftovers(&ran.record.id).await.is_empty());

    let by_name = run_with(PROBE, &[], probe("db", PORT)).await;
    assert!(!reached(&by_name.log), "{}", by_name.log);
    let by_address = run_with(PROBE, &[], probe(&address, PORT)).await;
    assert!(!reached(&by_address.log), "{}", by_address.log);
}

#[tokio::test]
async fn an_internal_network_has_no_egress() {
    let engine = engine().await;
    let internal_name = unique_name("internal");
    let created = engine
        .ensure_operator_network("isolated", &internal_name, true, None)
        .await
        .expect("create the internal network");
    assert!(created);
    let internal = TestNetwork {
        name: internal_name.clone(),
        containers: Vec::new(),
    };
    // The same name with the other egress setting is refused, never silently reused.
    let mismatch = engine
        .ensure_operator_network("isolated", &internal_name, false, None)
        .await
        .expect_err("egress mismatch");
    assert!(
        mismatch.to_string().contains("internal = true"),
        "{mismatch}"
    );

    let elsewhere = TestNetwork::new(false);
    let gateway = elsewhere.gateway();
    let port = host_listener(&gateway);

    // Positive control: a build with egress reaches the listener.
    let open = run_with(PROBE, &[], probe(&gateway, port)).await;
    assert!(reached(&open.log), "{}", open.log);

    let closed = run_with(PROBE, &[], |job| {
        probe(&gateway, port)(job);
        job.sandbox = attached("isolated", &internal, &[], true);
    })
    .await;
    assert_eq!(closed.status(), Succeeded, "{}", closed.log);
    assert!(!reached(&closed.log), "{}", closed.log);
    assert!(closed.record.network_interfaces.iter().all(|i| i.internal));
    assert!(leftovers(&closed.record.id).await.is_empty());
}

#[tokio::test]
async fn the_socket_and_host_paths_only_when_the_sandbox_allows() {
    const TRY: &str = "version: 0.2\nphases:\n  build:\n    commands:\n      - mount -t tmpfs none /mnt && echo MOUNTED || echo NOT-MOUNTED\n      - test -S /var/run/docker.sock && echo SOCKET || echo NO-SOCKET\n      - cat /shared/hello.txt || echo NO-SHARED\n      - touch /shared/new 2>/dev/null && echo WROTE || echo READ-ONLY\n";
    let default = run_with(TRY, &[], |_| {}).await;
    assert_eq!(default.status(), Succeeded, "{}", default.log);
    for needle in ["\nNOT-MOUNTED\n", "\nNO-SOCKET\n", "\nNO-SHARED\n"] {
        default.assert_log(needle);
    }

    let shared = tempfile::tempdir().expect("dir");
    std::fs::write(shared.path().join("hello.txt"), "shared-content\n").expect("write");
    let host_path = shared.path().to_str().expect("utf-8").to_string();
    let allowed = run_with(TRY, &[], |job| {
        job.sandbox = Sandbox {
            docker_socket: true,
            mounts: vec![Mount {
                host_path,
                container_path: "/shared".into(),
                read_only: true,
            }],
            ..Default::default()
        };
    })
    .await;
    assert_eq!(allowed.status(), Succeeded, "{}", allowed.log);
    for needle in [
        "Sandbox: the build gets the Docker socket",
        "\nNOT-MOUNTED\n",
        "\nSOCKET\n",
        "\nshared-content\n",
        "\nREAD-ONLY\n",
    ] {
        allowed.assert_log(needle);
    }
    assert!(!shared.path().join("new").exists());
}

/// Privileged mode needs a daemon that holds every capability; one in a restricted container
/// (as on some CI machines) cannot grant them, and the build says so instead of failing obscurely.
#[tokio::test]
async fn privileged_mode_gets_every_capability_or_says_why_not() {
    let ran = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - mount -t tmpfs none /mnt && echo MOUNTED\n",
        &[],
        |job| job.sandbox.privileged = true,
    )
    .await;
    ran.assert_log("Sandbox: the build gets privileged mode");
    match ran.status() {
        Succeeded => ran.assert_log("\nMOUNTED\n"),
        Fault => {
            let (_, message) = ran.context(kiln_buildspec::routing::PhaseType::Provisioning);
            assert!(
                message.starts_with("privileged mode is not available on this Docker host"),
                "{message}"
            );
        }
        other => panic!("{other:?}: {}", ran.log),
    }
    assert!(leftovers(&ran.record.id).await.is_empty());
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit_and_the_next_build_runs() {
    let bomb = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - 'bomb() { bomb | bomb & }; bomb; sleep 60'\n",
        &[],
        |job| {
            job.limits.pids = 64;
            job.timeout = Duration::from_secs(15);
        },
    )
    .await;
    assert!(
        matches!(bomb.status(), TimedOut | Failed),
        "{:?}: {}",
        bomb.status(),
        bomb.log
    );
    assert!(
        bomb.log.contains("Cannot fork") || bomb.log.contains("Resource temporarily unavailable"),
        "{}",
        bomb.log
    );
    assert!(leftovers(&bomb.record.id).await.is_empty());

    let next = run_with(
        "version: 0.2\nphases:\n  build:\n    commands:\n      - echo still-fine\n",
        &[],
        |_| {},
    )
    .await;
    assert_eq!(next.status(), Succeeded, "{}", next.log);
    next.assert_log("still-fine");
}
