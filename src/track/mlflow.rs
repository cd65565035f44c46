//! A small typed client for MLflow's REST API (tested against MLflow 3.17.2).
//!
//! Why not the `mlflow-client` crate: see docs/tracking.md, "Why our own client". In short, this
//! client keeps one pooled connection, has timeouts and bounded retries, sends and reads NaN and
//! infinities as the strings MLflow uses, keeps any path in the base URL, uploads artifacts, and
//! returns errors that keep the HTTP status and MLflow's `error_code`.

use super::params::{InvalidEntity, check_key, check_param, check_tag};
use super::{Metric, mlflow_f64};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// MLflow's per-request limits for `runs/log-batch`.
pub const MAX_METRICS_PER_BATCH: usize = 1000;
pub const MAX_PARAMS_PER_BATCH: usize = 100;
pub const MAX_TAGS_PER_BATCH: usize = 100;

/// Errors talking to an MLflow server. `Api` keeps the HTTP status and MLflow's error code.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    #[error("{endpoint}: http {status} {error_code}: {message}")]
    Api { endpoint: String, status: u16, error_code: String, message: String },

    #[error("{endpoint}: cannot reach the server ({attempts} attempts): {detail}")]
    Transport { endpoint: String, attempts: u32, detail: String },

    #[error("{endpoint}: unexpected response: {detail}")]
    Decode { endpoint: String, detail: String },

    #[error("unsupported tracking uri {uri:?}: {reason}")]
    BadUri { uri: String, reason: String },

    #[error("{}: {source}", path.display())]
    LocalFile { path: PathBuf, source: std::io::Error },

    #[error(transparent)]
    Invalid(#[from] InvalidEntity),
}

impl MlflowError {
    pub fn status(&self) -> Option<u16> {
        match self {
            MlflowError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn error_code(&self) -> Option<&str> {
        match self {
            MlflowError::Api { error_code, .. } => Some(error_code),
            _ => None,
        }
    }

    /// True when trying again later may succeed (server down, overloaded or failing), false when
    /// the request itself is wrong and would fail again.
    pub fn is_transient(&self) -> bool {
        match self {
            MlflowError::Transport { .. } => true,
            MlflowError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Timeouts and retries of a [`MlflowClient`].
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Whole API call, body included.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// For artifact transfers, which have no total limit: each read or write must progress
    /// within this time.
    pub transfer_stall_timeout: Duration,
    /// Attempts per call on connection errors, 5xx and 429 (1 = no retry).
    pub max_attempts: u32,
    /// Wait before the first retry; doubled each retry, at most 5 s.
    pub backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            transfer_stall_timeout: Duration::from_secs(60),
            max_attempts: 4,
            backoff: Duration::from_millis(250),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Experiment {
    pub experiment_id: String,
    pub name: String,
    #[serde(default)]
    pub lifecycle_stage: String,
    #[serde(default)]
    pub artifact_location: Option<String>,
    #[serde(default)]
    pub tags: Vec<ExperimentTag>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ExperimentTag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// The experiment tag MLflow's UI reads to show an experiment as model training (runs, metrics,
/// charts) rather than as a GenAI application (traces), which it guesses for an untagged one.
pub const EXPERIMENT_KIND_TAG: &str = "mlflow.experimentKind";
pub const EXPERIMENT_KIND: &str = "custom_model_development";

#[derive(Clone, Debug, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub experiment_id: String,
    #[serde(default)]
    pub run_name: Option<String>,
    #[serde(default)]
    pub status: String,
    #[serde(default, deserialize_with = "opt_i64")]
    pub start_time: Option<i64>,
    #[serde(default, deserialize_with = "opt_i64")]
    pub end_time: Option<i64>,
    #[serde(default)]
    pub artifact_uri: String,
    #[serde(default)]
    pub lifecycle_stage: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct KeyValue {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RunData {
    /// Latest value of each metric.
    #[serde(default, deserialize_with = "metrics_list")]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub params: Vec<KeyValue>,
    #[serde(default)]
    pub tags: Vec<KeyValue>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Run {
    pub info: RunInfo,
    #[serde(default)]
    pub data: RunData,
}

impl Run {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.data.tags.iter().find(|t| t.key == key).map(|t| t.value.as_str())
    }

    pub fn param(&self, key: &str) -> Option<&str> {
        self.data.params.iter().find(|t| t.key == key).map(|t| t.value.as_str())
    }

    /// The latest value of a metric.
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.data.metrics.iter().find(|m| m.key == key).map(|m| m.value)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct FileInfo {
    pub path: String,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default, deserialize_with = "opt_i64")]
    pub file_size: Option<i64>,
}

/// A blocking MLflow REST client holding one connection pool. Cheap to share by reference
/// across threads.
#[derive(Clone)]
pub struct MlflowClient {
    agent: ureq::Agent,
    /// Scheme, host and any path prefix, without a trailing slash.
    base: String,
    authorization: Option<String>,
    config: ClientConfig,
}

impl std::fmt::Debug for MlflowClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The authorization header stays out of logs.
        f.debug_struct("MlflowClient").field("base", &self.base).finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Retry {
    /// Safe to send twice (reads, updates, log-batch: MLflow drops identical metric rows).
    Idempotent,
    /// Sending twice may create twice (runs/create): retried only when nothing reached the server.
    OnlyIfNotSent,
}

impl MlflowClient {
    /// A client for `uri` (`http://host:port[/prefix]` or https). Credentials follow MLflow's
    /// conventions: `MLFLOW_TRACKING_TOKEN`, or `MLFLOW_TRACKING_USERNAME` and `MLFLOW_TRACKING_PASSWORD`.
    pub fn new(uri: &str, config: ClientConfig) -> Result<MlflowClient, MlflowError> {
        let base = normalize_uri(uri)?;
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_global(Some(config.timeout))
            .user_agent(format!("distillery/{}", env!("CARGO_PKG_VERSION")))
            .build();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let authorization = match (
            env("MLFLOW_TRACKING_TOKEN"),
            env("MLFLOW_TRACKING_USERNAME"),
            env("MLFLOW_TRACKING_PASSWORD"),
        ) {
            (Some(token), _, _) => Some(format!("Bearer {token}")),
            (None, Some(user), Some(pass)) => {
                Some(format!("Basic {}", base64(format!("{user}:{pass}").as_bytes())))
            }
            _ => None,
        };
        Ok(MlflowClient { agent: agent_config.into(), base, authorization, config })
    }

    /// The normalised base URI, used to key the sync ledger.
    pub fn base_uri(&self) -> &str {
        &self.base
    }

    /// `GET /health`: the body text ("OK") of a live server.
    pub fn health(&self) -> Result<String, MlflowError> {
        let url = format!("{}/health", self.base);
        self.with_retries("GET /health", || {
            let (status, body) = read_text("GET /health", self.agent.get(&url).call())?;
            check_status("GET /health", status, &body)?;
            Ok(body)
        })
    }

    pub fn get_experiment_by_name(&self, name: &str) -> Result<Option<Experiment>, MlflowError> {
        match self.api_get("experiments/get-by-name", &[("experiment_name", name)]) {
            Ok(v) => decode("experiments/get-by-name", &v["experiment"]).map(Some),
            Err(e) if e.error_code() == Some("RESOURCE_DOES_NOT_EXIST") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Returns the id of the active experiment `name`, creating it if needed. Creating is
    /// idempotent: when another client created it first (RESOURCE_ALREADY_EXISTS), its id is used.
    /// It is tagged as model training ([`EXPERIMENT_KIND_TAG`]) unless it already has a kind.
    pub fn ensure_experiment(&self, name: &str) -> Result<String, MlflowError> {
        if let Some(exp) = self.get_experiment_by_name(name)? {
            let kind_set = exp.tags.iter().any(|t| t.key == EXPERIMENT_KIND_TAG);
            let id = active_experiment(exp)?;
            if !kind_set {
                self.set_experiment_tag(&id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)?;
            }
            return Ok(id);
        }
        let body =
            json!({ "name": name, "tags": [{ "key": EXPERIMENT_KIND_TAG, "value": EXPERIMENT_KIND }] });
        match self.api_post("experiments/create", &body, Retry::Idempotent) {
            Ok(v) => id_field("experiments/create", &v, "experiment_id"),
            Err(e) if e.error_code() == Some("RESOURCE_ALREADY_EXISTS") => {
                match self.get_experiment_by_name(name)? {
                    Some(exp) => active_experiment(exp),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Creates a run. Not retried once the request may have reached the server (that could
    /// create two runs); callers that must not duplicate tag the run and search for it first.
    pub fn create_run(
        &self,
        experiment_id: &str,
        run_name: &str,
        start_time_ms: i64,
        tags: &[(String, String)],
    ) -> Result<RunInfo, MlflowError> {
        for (k, v) in tags {
            check_tag(k, v)?;
        }
        let tags: Vec<Value> = tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        let body = json!({
            "experiment_id": experiment_id,
            "run_name": run_name,
            "start_time": start_time_ms,
            "tags": tags,
        });
        let v = self.api_post("runs/create", &body, Retry::OnlyIfNotSent)?;
        decode("runs/create", &v["run"]["info"])
    }

    pub fn get_run(&self, run_id: &str) -> Result<Run, MlflowError> {
        let v = self.api_get("runs/get", &[("run_id", run_id)])?;
        decode("runs/get", &v["run"])
    }

    /// All runs of the experiments matching an MLflow filter string (deleted ones included).
    pub fn search_runs(&self, experiment_ids: &[&str], filter: &str) -> Result<Vec<Run>, MlflowError> {
        let mut runs = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut body = json!({
                "experiment_ids": experiment_ids,
                "filter": filter,
                "run_view_type": "ALL",
                "max_results": 1000,
            });
            if let Some(token) = &page_token {
                body["page_token"] = json!(token);
            }
            let v = self.api_post("runs/search", &body, Retry::Idempotent)?;
            let page: Vec<Run> = decode("runs/search", v.get("runs").unwrap_or(&json!([])))?;
            runs.extend(page);
            match v.get("next_page_token").and_then(Value::as_str) {
                Some(token) if !token.is_empty() => page_token = Some(token.to_string()),
                _ => return Ok(runs),
            }
        }
    }

    /// Logs metrics, params and tags, split into requests within MLflow's batch limits.
    /// Keys and values are checked first, because the server truncates long values silently.
    pub fn log_batch(
        &self,
        run_id: &str,
        metrics: &[Metric],
        params: &[(String, String)],
        tags: &[(String, String)],
    ) -> Result<(), MlflowError> {
        for m in metrics {
            check_key("metric", &m.key)?;
        }
        for (k, v) in params {
            check_param(k, v)?;
        }
        for (k, v) in tags {
            check_tag(k, v)?;
        }
        let kv = |items: &[(String, String)]| -> Vec<Value> {
            items.iter().map(|(k, v)| json!({"key": k, "value": v})).collect()
        };
        // As few requests as MLflow's limits allow: params, tags and metrics share a request (at
        // most 1000 entities, 100 params and 100 tags each), and long params and tags that
        // together could pass its 1 MB a request go alone.
        let (mut p, mut t, mut m) = (params, tags, metrics);
        while !(p.is_empty() && t.is_empty() && m.is_empty()) {
            let np = p.len().min(MAX_PARAMS_PER_BATCH);
            let text =
                |items: &[(String, String)]| items.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
            let nt = if text(&p[..np]) + text(&t[..t.len().min(MAX_TAGS_PER_BATCH)]) > 400_000 && np > 0 {
                0
            } else {
                t.len().min(MAX_TAGS_PER_BATCH)
            };
            let nm = if np + nt > 0 && text(&p[..np]) + text(&t[..nt]) > 400_000 {
                0
            } else {
                m.len().min(MAX_METRICS_PER_BATCH - np - nt)
            };
            let mut body = json!({ "run_id": run_id });
            if np > 0 {
                body["params"] = Value::from(kv(&p[..np]));
            }
            if nt > 0 {
                body["tags"] = Value::from(kv(&t[..nt]));
            }
            if nm > 0 {
                let wire: Vec<WireMetric> = m[..nm].iter().map(WireMetric::from).collect();
                body["metrics"] = serde_json::to_value(wire).expect("metrics serialise");
            }
            self.api_post("runs/log-batch", &body, Retry::Idempotent)?;
            (p, t, m) = (&p[np..], &t[nt..], &m[nm..]);
        }
        Ok(())
    }

    /// Sets a run's status (`RUNNING`, `FINISHED`, `FAILED`, `KILLED`) and end time. Without an
    /// end time the server keeps the one it has (MLflow cannot clear it: setting an ended run
    /// back to RUNNING leaves its old end time until the next end).
    pub fn update_run(
        &self,
        run_id: &str,
        status: &str,
        end_time_ms: Option<i64>,
    ) -> Result<(), MlflowError> {
        let mut body = json!({"run_id": run_id, "status": status});
        if let Some(end) = end_time_ms {
            body["end_time"] = json!(end);
        }
        self.api_post("runs/update", &body, Retry::Idempotent).map(|_| ())
    }

    /// Removes a tag from a run. A tag the run does not have (`RESOURCE_DOES_NOT_EXIST`: never
    /// set, or removed by an earlier call whose reply was lost) is not an error.
    pub fn set_experiment_tag(&self, experiment_id: &str, key: &str, value: &str) -> Result<(), MlflowError> {
        let body = json!({ "experiment_id": experiment_id, "key": key, "value": value });
        self.api_post("experiments/set-experiment-tag", &body, Retry::Idempotent).map(|_| ())
    }

    pub fn delete_tag(&self, run_id: &str, key: &str) -> Result<(), MlflowError> {
        match self.api_post("runs/delete-tag", &json!({"run_id": run_id, "key": key}), Retry::Idempotent) {
            Ok(_) => Ok(()),
            Err(e) if e.error_code() == Some("RESOURCE_DOES_NOT_EXIST") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every logged point of one metric, in the server's order.
    pub fn get_metric_history(&self, run_id: &str, key: &str) -> Result<Vec<Metric>, MlflowError> {
        let mut out = Vec::new();
        let mut page_token = String::new();
        loop {
            let mut query = vec![("run_id", run_id), ("metric_key", key), ("max_results", "25000")];
            if !page_token.is_empty() {
                query.push(("page_token", &page_token));
            }
            let v = self.api_get("metrics/get-history", &query)?;
            let page: Vec<WireMetric> =
                decode("metrics/get-history", v.get("metrics").unwrap_or(&json!([])))?;
            out.extend(page.into_iter().map(Metric::from));
            match v.get("next_page_token").and_then(Value::as_str) {
                Some(token) if !token.is_empty() => page_token = token.to_string(),
                _ => return Ok(out),
            }
        }
    }

    /// Uploads a file to `<run artifact root>/<artifact_path>` through the server's
    /// mlflow-artifacts API (the run's artifact URI must be `mlflow-artifacts:/...`, i.e. the
    /// server was started with artifact serving, MLflow's default).
    pub fn upload_artifact(
        &self,
        run: &RunInfo,
        local: &Path,
        artifact_path: &str,
    ) -> Result<(), MlflowError> {
        let url = self.artifact_url(run, artifact_path)?;
        let endpoint = format!("PUT mlflow-artifacts {artifact_path}");
        self.with_retries(&endpoint, || {
            let file = std::fs::File::open(local)
                .map_err(|source| MlflowError::LocalFile { path: local.to_path_buf(), source })?;
            let req = self.with_auth(self.agent.put(&url)).header("Content-Type", "application/octet-stream");
            let resp = req
                .config()
                .timeout_global(None)
                .timeout_per_read(Some(self.config.transfer_stall_timeout))
                .timeout_per_write(Some(self.config.transfer_stall_timeout))
                .build()
                .send(file);
            let (status, body) = read_text(&endpoint, resp)?;
            Ok(check_status(&endpoint, status, &body)?)
        })
    }

    /// Downloads one artifact of a run.
    pub fn download_artifact(&self, run: &RunInfo, artifact_path: &str) -> Result<Vec<u8>, MlflowError> {
        let url = self.artifact_url(run, artifact_path)?;
        let endpoint = format!("GET mlflow-artifacts {artifact_path}");
        self.with_retries(&endpoint, || {
            let resp = self
                .with_auth(self.agent.get(&url))
                .config()
                .timeout_global(None)
                .timeout_per_read(Some(self.config.transfer_stall_timeout))
                .build()
                .call();
            let mut resp = resp.map_err(|e| transport(&endpoint, e))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .body_mut()
                .with_config()
                .limit(u64::MAX)
                .read_to_vec()
                .map_err(|e| transport(&endpoint, e))?;
            if status >= 300 {
                check_status(&endpoint, status, &String::from_utf8_lossy(&bytes))?;
            }
            Ok(bytes)
        })
    }

    /// Files directly under `path` of a run's artifacts (`""` for the root).
    pub fn list_artifacts(&self, run_id: &str, path: &str) -> Result<Vec<FileInfo>, MlflowError> {
        let v = self.api_get("artifacts/list", &[("run_id", run_id), ("path", path)])?;
        decode("artifacts/list", v.get("files").unwrap_or(&json!([])))
    }

    fn artifact_url(&self, run: &RunInfo, artifact_path: &str) -> Result<String, MlflowError> {
        let root = artifact_root_path(&run.artifact_uri).ok_or_else(|| MlflowError::Decode {
            endpoint: "runs/get".into(),
            detail: format!(
                "run {} has artifact uri {:?}; only mlflow-artifacts:/ roots (a server serving artifacts) can be uploaded to",
                run.run_id, run.artifact_uri
            ),
        })?;
        let path: Vec<String> = root
            .split('/')
            .chain(artifact_path.split('/'))
            .filter(|s| !s.is_empty())
            .map(percent_encode)
            .collect();
        Ok(format!("{}/api/2.0/mlflow-artifacts/artifacts/{}", self.base, path.join("/")))
    }

    fn with_auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(a) => req.header("Authorization", a),
            None => req,
        }
    }

    fn api_get(&self, method: &str, query: &[(&str, &str)]) -> Result<Value, MlflowError> {
        let url = format!("{}/api/2.0/mlflow/{method}", self.base);
        let endpoint = format!("GET {method}");
        self.with_retries(&endpoint, || {
            let mut req = self.with_auth(self.agent.get(&url));
            for (k, v) in query {
                req = req.query(*k, *v);
            }
            Ok(parse_response(&endpoint, read_text(&endpoint, req.call())?)?)
        })
    }

    fn api_post(&self, method: &str, body: &Value, retry: Retry) -> Result<Value, MlflowError> {
        let url = format!("{}/api/2.0/mlflow/{method}", self.base);
        let endpoint = format!("POST {method}");
        let bytes = serde_json::to_vec(body).expect("json values serialize");
        let once = retry == Retry::OnlyIfNotSent;
        self.with_retries(&endpoint, || {
            let req = self.with_auth(self.agent.post(&url)).header("Content-Type", "application/json");
            let resp = match req.send(&bytes[..]) {
                Ok(resp) => resp,
                // A request that may have reached the server is not sent again when sending twice
                // could create twice.
                Err(e) if once && !nothing_sent(&e) => {
                    return Err(Attempt::Final(transport(&endpoint, e)));
                }
                Err(e) => return Err(Attempt::Again(transport(&endpoint, e))),
            };
            let result = read_text(&endpoint, Ok(resp)).and_then(|r| Ok(parse_response(&endpoint, r)?));
            result.map_err(|a| match a {
                Attempt::Again(e) | Attempt::Final(e) if once => Attempt::Final(e),
                other => other,
            })
        })
    }

    fn with_retries<T>(
        &self,
        endpoint: &str,
        mut f: impl FnMut() -> Result<T, Attempt>,
    ) -> Result<T, MlflowError> {
        let mut wait = self.config.backoff;
        let attempts = self.config.max_attempts.max(1);
        for attempt in 1..=attempts {
            match f() {
                Ok(v) => return Ok(v),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Again(e)) if e.is_transient() && attempt < attempts => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(Attempt::Again(MlflowError::Transport { detail, .. })) => {
                    return Err(MlflowError::Transport {
                        endpoint: endpoint.to_string(),
                        attempts: attempt,
                        detail,
                    });
                }
                Err(Attempt::Again(e)) => return Err(e),
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// Outcome of one attempt: `Again` errors are retried when transient.
enum Attempt {
    Again(MlflowError),
    Final(MlflowError),
}

impl From<MlflowError> for Attempt {
    fn from(e: MlflowError) -> Self {
        Attempt::Again(e)
    }
}

/// True for failures where no byte of the request can have reached the server.
fn nothing_sent(e: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        ureq::Error::Io(io) => {
            matches!(io.kind(), ErrorKind::ConnectionRefused | ErrorKind::AddrNotAvailable)
        }
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve),
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        _ => false,
    }
}

fn transport(endpoint: &str, e: ureq::Error) -> MlflowError {
    MlflowError::Transport { endpoint: endpoint.to_string(), attempts: 1, detail: e.to_string() }
}

fn read_text(
    endpoint: &str,
    resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<(u16, String), Attempt> {
    let mut resp = resp.map_err(|e| transport(endpoint, e))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string().map_err(|e| transport(endpoint, e))?;
    Ok((status, body))
}

fn check_status(endpoint: &str, status: u16, body: &str) -> Result<(), MlflowError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        error_code: String,
        #[serde(default)]
        message: String,
    }
    let (error_code, message) = match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) if !e.error_code.is_empty() => (e.error_code, e.message),
        _ => (String::new(), body.chars().take(500).collect::<String>().trim().to_string()),
    };
    Err(MlflowError::Api { endpoint: endpoint.to_string(), status, error_code, message })
}

fn parse_response(endpoint: &str, (status, body): (u16, String)) -> Result<Value, MlflowError> {
    check_status(endpoint, status, &body)?;
    if body.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(&body).map_err(|e| MlflowError::Decode {
        endpoint: endpoint.to_string(),
        detail: format!("invalid json: {e}"),
    })
}

fn decode<T: serde::de::DeserializeOwned>(endpoint: &str, v: &Value) -> Result<T, MlflowError> {
    T::deserialize(v)
        .map_err(|e| MlflowError::Decode { endpoint: endpoint.to_string(), detail: e.to_string() })
}

fn id_field(endpoint: &str, v: &Value, field: &str) -> Result<String, MlflowError> {
    v.get(field).and_then(Value::as_str).map(str::to_string).ok_or_else(|| MlflowError::Decode {
        endpoint: endpoint.to_string(),
        detail: format!("no {field} in {v}"),
    })
}

fn active_experiment(exp: Experiment) -> Result<String, MlflowError> {
    if exp.lifecycle_stage == "deleted" {
        return Err(MlflowError::Api {
            endpoint: "experiments/get-by-name".into(),
            status: 400,
            error_code: "INVALID_STATE".into(),
            message: format!(
                "experiment {:?} is deleted on the server; restore it (mlflow experiments restore) or rename the experiment",
                exp.name
            ),
        });
    }
    Ok(exp.experiment_id)
}

/// Checks the scheme and strips a trailing slash; keeps any path prefix.
pub(crate) fn normalize_uri(uri: &str) -> Result<String, MlflowError> {
    let bad = |reason: &str| MlflowError::BadUri { uri: uri.to_string(), reason: reason.to_string() };
    let trimmed = uri.trim().trim_end_matches('/');
    let rest =
        trimmed.strip_prefix("http://").or_else(|| trimmed.strip_prefix("https://")).ok_or_else(|| {
            bad("use an http:// or https:// MLflow server (file stores and databricks are not supported)")
        })?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    if trimmed.contains('?') || trimmed.contains('#') {
        return Err(bad("no query or fragment allowed"));
    }
    Ok(trimmed.to_string())
}

/// The path of a run's artifact root inside the mlflow-artifacts API, from its artifact URI
/// (`mlflow-artifacts:/1/<run>/artifacts` or `mlflow-artifacts://host/1/<run>/artifacts`, or an
/// http(s) URL through `/api/2.0/mlflow-artifacts/artifacts/`).
fn artifact_root_path(artifact_uri: &str) -> Option<String> {
    if let Some(rest) = artifact_uri.strip_prefix("mlflow-artifacts:") {
        let path = match rest.strip_prefix("//") {
            Some(with_host) => with_host.find('/').map(|i| &with_host[i..]).unwrap_or(""),
            None => rest,
        };
        return Some(path.trim_matches('/').to_string());
    }
    let anchor = "/api/2.0/mlflow-artifacts/artifacts/";
    if artifact_uri.starts_with("http://") || artifact_uri.starts_with("https://") {
        return artifact_uri.split_once(anchor).map(|(_, p)| p.trim_matches('/').to_string());
    }
    None
}

fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A metric as MLflow's JSON carries it (int64 fields may come as strings).
#[derive(Serialize, Deserialize)]
struct WireMetric {
    key: String,
    #[serde(with = "mlflow_f64")]
    value: f64,
    #[serde(default, deserialize_with = "lenient_i64")]
    timestamp: i64,
    #[serde(default, deserialize_with = "lenient_i64")]
    step: i64,
}

impl From<&Metric> for WireMetric {
    fn from(m: &Metric) -> Self {
        WireMetric { key: m.key.clone(), value: m.value, timestamp: m.timestamp_ms, step: m.step }
    }
}

impl From<WireMetric> for Metric {
    fn from(m: WireMetric) -> Self {
        Metric { key: m.key, value: m.value, step: m.step, timestamp_ms: m.timestamp }
    }
}

fn metrics_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Metric>, D::Error> {
    Ok(Vec::<WireMetric>::deserialize(d)?.into_iter().map(Metric::from).collect())
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Str(String),
}

fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match IntOrString::deserialize(d)? {
        IntOrString::Int(v) => Ok(v),
        IntOrString::Str(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<IntOrString>::deserialize(d)? {
        None => Ok(None),
        Some(IntOrString::Int(v)) => Ok(Some(v)),
        Some(IntOrString::Str(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_uri_keeps_its_path_and_drops_the_trailing_slash() {
        assert_eq!(normalize_uri("http://h:5000/").unwrap(), "http://h:5000");
        assert_eq!(normalize_uri("https://h/prefix/mlflow/").unwrap(), "https://h/prefix/mlflow");
        for bad in ["file:///tmp/mlruns", "databricks", "http://", "http:///x", "http://h/?a=1"] {
            assert!(matches!(normalize_uri(bad), Err(MlflowError::BadUri { .. })), "{bad}");
        }
    }

    #[test]
    fn artifact_roots_map_to_the_proxy_path() {
        assert_eq!(
            artifact_root_path("mlflow-artifacts:/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(
            artifact_root_path("mlflow-artifacts://host:5000/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(
            artifact_root_path("http://h/p/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts").as_deref(),
            Some("1/abc/artifacts")
        );
        assert_eq!(artifact_root_path("s3://bucket/1/abc/artifacts"), None);
        assert_eq!(artifact_root_path("/tmp/mlruns/1/abc/artifacts"), None);
    }

    #[test]
    fn artifact_url_encodes_segments_under_the_base_path() {
        let client = MlflowClient::new("http://h:1/prefix", ClientConfig::default()).unwrap();
        let run = RunInfo {
            run_id: "abc".into(),
            experiment_id: "1".into(),
            run_name: None,
            status: String::new(),
            start_time: None,
            end_time: None,
            artifact_uri: "mlflow-artifacts:/1/abc/artifacts".into(),
            lifecycle_stage: String::new(),
        };
        assert_eq!(
            client.artifact_url(&run, "plots/loss curve.png").unwrap(),
            "http://h:1/prefix/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/plots/loss%20curve.png"
        );
    }

    #[test]
    fn error_bodies_keep_status_and_code() {
        let err = check_status(
            "POST runs/log-batch",
            400,
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "bad metric"}"#,
        )
        .unwrap_err();
        assert_eq!(err.status(), Some(400));
        assert_eq!(err.error_code(), Some("INVALID_PARAMETER_VALUE"));
        assert!(!err.is_transient());
        assert_eq!(err.to_string(), "POST runs/log-batch: http 400 INVALID_PARAMETER_VALUE: bad metric");
        let err = check_status("GET runs/get", 502, "<html>bad gateway</html>").unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.error_code(), Some(""));
    }

    #[test]
    fn wire_metrics_read_strings_for_int64_and_non_finite_values() {
        let v: Vec<WireMetric> = serde_json::from_str(
            r#"[{"key":"a","value":"NaN","timestamp":"17","step":"2"},{"key":"b","value":1.5,"timestamp":3},
                {"key":"c","value":"-Infinity","timestamp":4,"step":1}]"#,
        )
        .unwrap();
        let m: Vec<Metric> = v.into_iter().map(Metric::from).collect();
        assert!(m[0].value.is_nan() && m[0].timestamp_ms == 17 && m[0].step == 2);
        assert_eq!(m[1], Metric::new("b", 1.5, 0, 3));
        assert_eq!(m[2].value, f64::NEG_INFINITY);
    }

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn a_closed_port_is_a_transport_error_after_bounded_retries() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config =
            ClientConfig { max_attempts: 3, backoff: Duration::from_millis(1), ..ClientConfig::default() };
        let client = MlflowClient::new(&format!("http://127.0.0.1:{port}"), config).unwrap();
        let err = client.health().unwrap_err();
        assert!(matches!(err, MlflowError::Transport { attempts: 3, .. }), "{err}");
        assert!(err.is_transient());
    }
}
