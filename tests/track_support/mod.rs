//! Starts and stops a real MLflow server for the tracking tests.
//!
//! The server is the one `scripts/mlflow-venv` installs; tests find it through
//! `DISTILLERY_MLFLOW` (the path of its `mlflow` executable). Without it the tests skip with a
//! printed reason, except under `CI=true`, where they fail.
#![allow(dead_code)]

use distillery::track::{ClientConfig, MlflowClient};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The MLflow executable to test against, or None (after printing why) when tests should skip.
pub fn mlflow_executable() -> Option<PathBuf> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    match std::env::var_os("DISTILLERY_MLFLOW") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "DISTILLERY_MLFLOW={} is not a file; run scripts/mlflow-venv and export its output",
                path.display()
            );
            Some(path)
        }
        None if in_ci => panic!(
            "DISTILLERY_MLFLOW is not set but CI=true: MLflow tests must run in CI; \
             run `export DISTILLERY_MLFLOW=\"$(scripts/mlflow-venv)\"` first"
        ),
        None => {
            eprintln!(
                "skipping: DISTILLERY_MLFLOW is not set (export DISTILLERY_MLFLOW=\"$(scripts/mlflow-venv)\" to run MLflow tests)"
            );
            None
        }
    }
}

/// A running `mlflow server` on 127.0.0.1 with its sqlite store and artifacts under `dir`.
pub struct MlflowServer {
    pub port: u16,
    pub uri: String,
    pub dir: PathBuf,
    mlflow: PathBuf,
    /// Removed by the watchdog once the server is gone (for servers kept in a static).
    remove_dir_after: bool,
    child: Option<Child>,
}

impl MlflowServer {
    /// Starts a server on a free port.
    pub fn start(mlflow: &Path, dir: &Path, remove_dir_after: bool) -> MlflowServer {
        // Free a moment ago and taken now (by another process): another one.
        let mut port = free_port();
        for _ in 0..10 {
            if port_is_free(port) {
                break;
            }
            port = free_port();
        }
        let mut server = MlflowServer {
            port,
            uri: format!("http://127.0.0.1:{port}"),
            dir: dir.to_path_buf(),
            mlflow: mlflow.to_path_buf(),
            remove_dir_after,
            child: None,
        };
        server.spawn();
        server
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after stop");
        self.spawn();
    }

    pub fn client(&self) -> MlflowClient {
        MlflowClient::new(&self.uri, ClientConfig::default()).expect("test uri is valid")
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("server dir");
        assert!(
            port_is_free(self.port),
            "port {} is already in use: another server would answer for ours",
            self.port
        );
        // A shell watchdog in its own process group: it stops the server (and uvicorn's worker)
        // when the test process exits, even when a server kept in a static is never dropped.
        // TERM is ignored by the shell only, after the server started, so `kill -TERM -group`
        // stops the server and the shell then cleans up and exits.
        let script = r#"
"$MLFLOW" server --host 127.0.0.1 --port "$PORT" --workers 1 \
  --backend-store-uri "sqlite:///$DIR/mlflow.db" --artifacts-destination "$DIR/artifacts" \
  >>"$DIR/server.log" 2>&1 &
S=$!
trap '' TERM
while kill -0 "$TESTPID" 2>/dev/null && kill -0 "$S" 2>/dev/null; do sleep 0.3; done
kill -TERM 0 2>/dev/null
sleep 1
if [ "$REMOVE" = 1 ]; then rm -rf "$DIR"; fi
kill -KILL 0
"#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("MLFLOW", &self.mlflow)
            .env("PORT", self.port.to_string())
            .env("DIR", &self.dir)
            .env("TESTPID", std::process::id().to_string())
            .env("REMOVE", if self.remove_dir_after { "1" } else { "0" })
            .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("spawn sh for mlflow server");
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(90));
    }

    fn wait_healthy(&mut self, limit: Duration) {
        let started = Instant::now();
        let client = MlflowClient::new(
            &self.uri,
            ClientConfig {
                max_attempts: 1,
                timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(1),
                ..ClientConfig::default()
            },
        )
        .unwrap();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mlflow server exited ({status}) before answering /health; log:\n{}", self.log_tail());
            }
            if client.health().is_ok_and(|body| body.trim() == "OK") {
                eprintln!(
                    "mlflow server on port {} healthy after {:.1} s",
                    self.port,
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            if started.elapsed() > limit {
                self.stop();
                panic!("mlflow server did not answer /health within {limit:?}; log:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the server (the whole process group) and waits until its port is free.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = child.wait();
        while Instant::now() < deadline && !port_is_free(self.port) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for MlflowServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free port below Linux's ephemeral range (32768-60999): a port the kernel hands out for
/// port 0 is also what it gives outgoing connections, so one could take it while the server is
/// still starting ("port already in use" under load). Tried at random until one is free.
/// A port is handed out once per process, so two tests starting servers at once never pick the
/// same one (CI once saw a port taken between the pick and the server's start).
fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0..200u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(attempt);
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if !given.contains(&port) && port_is_free(port) {
            given.push(port);
            return port;
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().unwrap().port()
}

/// Free when nothing answers on it and it can be bound.
fn port_is_free(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() && TcpListener::bind(addr).is_ok()
}
