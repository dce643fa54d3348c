//! Operator networks and the sandbox policy through real processes: a `kiln worker` whose config
//! defines networks and sandbox exceptions, StartBuild refusing what no worker allows, `kiln
//! network list`, and no Kiln container or network left after many builds (failing, out of
//! memory, a fork bomb, a stopped one, a killed worker). Traffic goes only to containers and
//! networks the test creates.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_proto::v1::StopBuildRequest;
use kiln_tests::{
    apply_project, checkout, client, docker, get, kiln, require_docker, start, start_coordinator,
    start_listener, start_worker, unique_name, wait_complete, Proc,
};

const GREETING: &str = "hello from the database";

/// Tries `$TARGET:5432` for 5 s; prints the greeting or UNREACHABLE.
const PROBE: &str = "version: 0.2\nphases:\n  build:\n    commands:\n      - timeout 5 bash -c 'exec 3<>/dev/tcp/$TARGET/5432; head -n1 <&3' || echo UNREACHABLE\n      - sleep ${HOLD:-0}\n";

/// Removes Docker objects by name when dropped (containers first).
struct Cleanup(Vec<(&'static str, String)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (kind, name) in &self.0 {
            let args: &[&str] = match *kind {
                "container" => &["rm", "-f", name],
                _ => &["network", "rm", name],
            };
            let _ = Command::new("docker").args(args).output();
        }
    }
}

fn log_of(server: &str, id: &str) -> String {
    let out = kiln(&["logs", id, "--server", server], &[]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kiln start` that the server refuses: its stderr.
fn refused(server: &str, dir: &Path, project: &str) -> String {
    let dir = dir.to_str().expect("utf-8");
    let out = kiln(
        &["start", dir, "--project", project, "--server", server],
        &[],
    );
    assert!(!out.status.success(), "{project} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `kiln network list --json` shows the worker.
fn network_list(server: &str) -> serde_json::Value {
    let out = kiln(&["network", "list", "--json", "--server", server], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn wait_for_worker(server: &str, worker: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while network_list(server)["workers"]
        .as_array()
        .is_none_or(|w| w.is_empty())
    {
        assert!(
            worker.running(),
            "the worker exited:\n{}",
            worker.log_text()
        );
        assert!(Instant::now() < deadline, "the worker did not connect");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn builds_join_operator_networks_only_where_the_worker_config_allows() {
    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let (_c, addr) = start_coordinator(data.path(), &[]);
    let server = format!("http://{addr}");
    let (services, sealed) = (unique_name("services"), unique_name("sealed"));
    let mut cleanup = Cleanup(vec![
        ("network", services.clone()),
        ("network", sealed.clone()),
    ]);
    let config = data.path().join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "slots = 2\n\
             [[networks]]\nname = \"services\"\ndocker_network = \"{services}\"\nprojects = [\"app\"]\n\
             [[networks]]\nname = \"sealed\"\ndocker_network = \"{sealed}\"\ninternal = true\nprojects = [\"*\"]\n\
             [sandbox]\nprivileged = [\"dind\"]\n"
        ),
    )
    .expect("write");
    let mut worker = start_worker(
        "w-net",
        addr,
        &["--config", config.to_str().expect("utf-8")],
    );
    wait_for_worker(&server, &mut worker);
    // The worker created both networks, the sealed one without egress.
    assert_eq!(
        docker(&["network", "inspect", "-f", "{{.Internal}}", &sealed]),
        "true"
    );
    assert_eq!(
        docker(&["network", "inspect", "-f", "{{.Internal}}", &services]),
        "false"
    );
    let db = start_listener(&services, "db", 5432, GREETING);
    cleanup.0.insert(0, ("container", db));

    let file = data.path().join("project.yaml");
    for text in [
        "name: app\nvpc:\n  - network: services\n    aliases: [app-build]\n",
        "name: other\nvpc:\n  - network: services\n",
        "name: plain\n",
        "name: nowhere\nvpc:\n  - network: no-such-network\n",
        "name: web\nenvironment:\n  privilegedMode: true\n",
        "name: dind\nenvironment:\n  privilegedMode: true\n",
    ] {
        apply_project(&server, &file, text);
    }
    let src = checkout(&[("buildspec.yml", PROBE)]);

    // Refused at StartBuild, naming the project, the network and the fix.
    let e = refused(&server, src.path(), "other");
    assert!(e.contains("permission denied"), "{e}");
    assert!(
        e.contains("project \"other\" may not use network \"services\""),
        "{e}"
    );
    assert!(e.contains("`projects` in the worker config"), "{e}");
    let e = refused(&server, src.path(), "nowhere");
    assert!(
        e.contains("network \"no-such-network\" is not defined"),
        "{e}"
    );
    let e = refused(&server, src.path(), "web");
    assert!(e.contains("asks for privileged mode"), "{e}");
    assert!(e.contains("`privileged` under [sandbox]"), "{e}");
    let listed = kiln(&["list", "--server", &server], &[]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    for project in ["other", "nowhere", "web"] {
        assert!(
            !listed.contains(&format!("{project}:")),
            "nothing was queued: {listed}"
        );
    }
    // Allowed privileged mode is accepted (whether this Docker host can grant it is the engine
    // test's business).
    let dind = start(
        addr,
        src.path(),
        &["--project", "dind", "--env", "TARGET=db"],
    );

    // The attached build reaches the database by its alias; `kiln network list` shows it.
    let id = start(
        addr,
        src.path(),
        &["--project", "app", "--env", "TARGET=db", "--env", "HOLD=30"],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listed = network_list(&server);
        let worker = &listed["workers"][0];
        assert_eq!(worker["workerId"], "w-net");
        assert_eq!(worker["networks"][0]["name"], "services");
        assert_eq!(worker["networks"][1]["internal"], true);
        let attached = worker["attached"].as_array().cloned().unwrap_or_default();
        if attached.iter().any(|a| a["buildId"] == id.as_str()) {
            let table = kiln(&["network", "list", "--server", &server], &[]);
            let table = String::from_utf8_lossy(&table.stdout);
            assert!(
                table.contains(&id) && table.contains("app-build"),
                "{table}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the build never showed as attached: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    while !log_of(&server, &id).contains(GREETING) {
        assert!(Instant::now() < deadline, "{}", log_of(&server, &id));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client(addr, None)
        .await
        .stop_build(StopBuildRequest { id: id.clone() })
        .await
        .expect("StopBuild");
    let mut c = client(addr, None).await;
    let build = wait_complete(&mut c, &id, Duration::from_secs(120)).await;
    let on_services: Vec<_> = build
        .network_interfaces
        .iter()
        .filter(|i| i.network == "services")
        .collect();
    assert_eq!(on_services.len(), 1, "{:?}", build.network_interfaces);
    assert_eq!(on_services[0].docker_network, services);
    assert!(!on_services[0].ip_address.is_empty());
    let shown = kiln(&["get", &id, "--server", &server], &[]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(&on_services[0].ip_address), "{shown}");

    // A project without the attachment cannot reach it.
    let plain = start(
        addr,
        src.path(),
        &["--project", "plain", "--env", "TARGET=db"],
    );
    let b = wait_complete(&mut c, &plain, Duration::from_secs(120)).await;
    assert_eq!(b.build_status, "SUCCEEDED");
    let log = log_of(&server, &plain);
    assert!(
        log.contains("\nUNREACHABLE\n") && !log.contains(GREETING),
        "{log}"
    );
    wait_complete(&mut c, &dind, Duration::from_secs(120)).await;
}

/// Builds of `project` left in Docker: containers and networks by the project label.
fn kiln_objects(project: &str) -> Vec<String> {
    let filter = format!("label=kiln.project={project}");
    let containers = docker(&["ps", "-aq", "--filter", &filter]);
    let networks = docker(&["network", "ls", "-q", "--filter", &filter]);
    containers
        .lines()
        .chain(networks.lines())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_builds_failing_stopped_and_on_a_killed_worker_leave_nothing_behind() {
    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let (_c, addr) = start_coordinator(data.path(), &["--lease-ttl", "3s"]);
    let server = format!("http://{addr}");
    let project = unique_name("churn");
    let config = data.path().join("worker.toml");
    std::fs::write(&config, "slots = 3\n[sandbox]\npids_limit = 64\n").expect("write");
    let config = config.to_str().expect("utf-8").to_string();
    let mut worker = start_worker("w-churn", addr, &["--config", &config]);
    wait_for_worker(&server, &mut worker);
    apply_project(
        &server,
        &data.path().join("p.yaml"),
        &format!("name: {project}\n"),
    );

    let spec =
        |commands: &str| format!("version: 0.2\nphases:\n  build:\n    commands:\n{commands}");
    // SMALL's 3 GiB fill up in seconds: tail keeps a line that never ends.
    let kinds = [
        ("ok", spec("      - echo fine\n")),
        ("fails", spec("      - exit 3\n")),
        (
            "bomb",
            spec("      - 'bomb() { bomb | bomb & }; bomb; sleep 5'\n"),
        ),
        (
            "oom",
            spec("      - head -c 5G /dev/zero | tail > /dev/null\n"),
        ),
    ];
    let dirs: Vec<_> = kinds
        .iter()
        .map(|(_, text)| checkout(&[("buildspec.yml", text)]))
        .collect();
    let mut c = client(addr, None).await;
    let mut ids = Vec::new();
    // One out-of-memory build (it takes 3 GiB), five of each other kind.
    for n in 0..16 {
        let kind = if n == 15 { 3 } else { n % 3 };
        let extra = ["--project", project.as_str()];
        ids.push((kinds[kind].0, start(addr, dirs[kind].path(), &extra)));
    }
    for (kind, id) in &ids {
        let b = wait_complete(&mut c, id, Duration::from_secs(600)).await;
        let expected: &[&str] = match *kind {
            "ok" => &["SUCCEEDED"],
            "fails" | "oom" => &["FAILED"],
            // Whatever the bomb's shell makes of its failed forks, the container holds them.
            _ => &["SUCCEEDED", "FAILED"],
        };
        assert!(
            expected.contains(&b.build_status.as_str()),
            "{kind} {id}: {b:?}"
        );
        if *kind == "bomb" {
            let log = log_of(&server, id);
            assert!(
                log.contains("Cannot fork") || log.contains("Resource temporarily unavailable"),
                "{log}"
            );
        }
    }
    // One stopped while it runs.
    let long = checkout(&[(
        "buildspec.yml",
        &spec("      - echo started\n      - sleep 300\n"),
    )]);
    let stopped = start(addr, long.path(), &["--project", &project]);
    while !log_of(&server, &stopped).contains("\nstarted\n") {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.stop_build(StopBuildRequest {
        id: stopped.clone(),
    })
    .await
    .expect("StopBuild");
    assert_eq!(
        wait_complete(&mut c, &stopped, Duration::from_secs(120))
            .await
            .build_status,
        "STOPPED"
    );
    // Three on a worker that is killed mid-build: its containers stay until it starts again.
    let on_killed: Vec<String> = (0..3)
        .map(|_| start(addr, long.path(), &["--project", &project]))
        .collect();
    for id in &on_killed {
        while !log_of(&server, id).contains("\nstarted\n") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    worker.kill9();
    assert!(
        !kiln_objects(&project).is_empty(),
        "the killed worker's builds were still there"
    );
    let _restarted = start_worker("w-churn", addr, &["--config", &config]);
    // The lost builds are handed out again (and stopped here: they would sleep for minutes).
    for id in &on_killed {
        let _ = c.stop_build(StopBuildRequest { id: id.clone() }).await;
        let b = wait_complete(&mut c, id, Duration::from_secs(180)).await;
        assert!(b.build_complete, "{b:?}");
    }
    assert_eq!(ids.len() + 1 + on_killed.len(), 20);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = kiln_objects(&project);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let oom = ids
        .iter()
        .find(|(k, _)| *k == "oom")
        .map(|(_, id)| id)
        .expect("an oom build");
    let b = get(addr, oom).await;
    let build = b
        .phases
        .iter()
        .find(|p| p.phase_type == "BUILD")
        .expect("BUILD phase");
    assert!(
        build
            .contexts
            .iter()
            .any(|c| c.message.contains("out of memory")),
        "{build:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kiln_server_takes_a_worker_config_with_networks() {
    require_docker();
    let data = tempfile::tempdir().expect("tempdir");
    let docker_network = unique_name("single");
    let _cleanup = Cleanup(vec![("network", docker_network.clone())]);
    let config = data.path().join("worker.toml");
    std::fs::write(
        &config,
        format!("[[networks]]\nname = \"db\"\ndocker_network = \"{docker_network}\"\nprojects = [\"*\"]\n"),
    )
    .expect("write");
    let d = data.path().to_str().expect("utf-8");
    let (mut server, addr) = Proc::kiln(
        "server",
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            d,
            "--worker-config",
            config.to_str().expect("utf-8"),
        ],
        &[],
        true,
    );
    let server_url = format!("http://{}", addr.expect("address"));
    wait_for_worker(&server_url, &mut server);
    let listed = network_list(&server_url);
    assert_eq!(
        listed["workers"][0]["networks"][0]["name"], "db",
        "{listed}"
    );
    assert_eq!(
        docker(&["network", "inspect", "-f", "{{.Name}}", &docker_network]),
        docker_network
    );
}
