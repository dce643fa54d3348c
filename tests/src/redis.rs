//! A real `redis-server` on a free loopback port, killed when dropped. A missing `redis-server`
//! fails the test loudly with the fix; it never skips.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    port: u16,
    /// The working directory, when the server made its own.
    _dir: Option<tempfile::TempDir>,
}

impl RedisServer {
    /// A throwaway server: nothing is saved.
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::spawn(dir, &["--save", "", "--appendonly", "no"])
    }

    /// A throwaway server in a directory of its own.
    pub fn start_throwaway() -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut server = RedisServer::start(dir.path());
        server._dir = Some(dir);
        server
    }

    /// A server that fsyncs every write to an append-only file in `dir`, so a server started
    /// again on `dir` has everything.
    pub fn start_durable(dir: &Path) -> RedisServer {
        RedisServer::spawn(
            dir,
            &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
        )
    }

    fn spawn(dir: &Path, persistence: &[&str]) -> RedisServer {
        // A port picked free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .arg("--dir")
                .arg(dir)
                .args(persistence)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let child = match child {
                Ok(child) => child,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => panic!(
                    "redis-server is not installed, and the Redis tests need it: install it \
                     (apt-get install redis-server, or deploy/test-deps.sh)"
                ),
                Err(err) => panic!("cannot start redis-server: {err}"),
            };
            let mut server = RedisServer {
                child,
                port,
                _dir: None,
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("redis-server did not start on a loopback port");
    }

    /// Waits until the server answers PING; false if it exited (its port was taken).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut reply = [0; 7];
                if conn.write_all(b"PING\r\n").is_ok()
                    && conn.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
