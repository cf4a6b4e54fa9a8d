//! The Dockerfile's assumptions, checked without a Docker engine: what it copies exists and is
//! not ignored, the binary's name, its non-root user, no demo files in the image, a health check
//! that uses the binary (no curl), a stripped release build, the default state path creatable by
//! the store, and a compose example whose settings load. The health subcommand is run against a
//! running daemon.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use marketo_sync::config::{SettingsSource, load};
use secrecy::ExposeSecret;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One Dockerfile instruction: its keyword (upper case) and its arguments, continuation lines
/// joined.
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

/// The Dockerfile's stages, each a list of instructions (the first one is its FROM).
fn stages() -> Vec<Vec<Instruction>> {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("read Dockerfile");
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            if !current.trim().is_empty() {
                joined.push(std::mem::take(&mut current));
            }
            current.clear();
        }
    }
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in joined {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        };
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(instruction);
    }
    stages
}

fn runtime_stage() -> Vec<Instruction> {
    stages().pop().expect("a stage")
}

/// (sources, destination) of a COPY without --from, i.e. from the build context.
fn context_copies(stage: &[Instruction]) -> Vec<(Vec<String>, String)> {
    stage
        .iter()
        .filter(|i| i.keyword == "COPY" && !i.args.contains("--from"))
        .map(|i| {
            let mut words: Vec<String> = i
                .args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .map(str::to_owned)
                .collect();
            let destination = words.pop().expect("a destination");
            (words, destination)
        })
        .collect()
}

/// The patterns of .dockerignore.
fn ignored_patterns() -> Vec<String> {
    std::fs::read_to_string(root().join(".dockerignore"))
        .expect("a .dockerignore exists")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// Whether `path` (relative to the context) is excluded by one of the patterns (the subset of
/// the syntax the file uses: directories, exact names, and `*.ext` at the root).
fn is_ignored(path: &str, patterns: &[String]) -> bool {
    let path = path.trim_start_matches("./").trim_end_matches('/');
    patterns.iter().any(|pattern| {
        let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
        if let Some(ext) = pattern.strip_prefix("*.") {
            return !path.contains('/') && path.ends_with(&format!(".{ext}"));
        }
        path == pattern || path.starts_with(&format!("{pattern}/"))
    })
}

#[test]
fn every_path_the_dockerfile_copies_exists_and_is_sent_to_the_builder() {
    let patterns = ignored_patterns();
    let mut checked = 0;
    for stage in stages() {
        for (sources, _) in context_copies(&stage) {
            for source in sources {
                let path = root().join(&source);
                assert!(
                    path.exists(),
                    "the Dockerfile copies {source}, which is missing"
                );
                assert!(
                    !is_ignored(&source, &patterns),
                    "the Dockerfile copies {source}, which .dockerignore leaves out"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 6, "{checked} paths");
    // What the build embeds (include_str!) must reach the builder too.
    for embedded in ["config/demo.toml", "config/mappings", "migrations", "src"] {
        assert!(!is_ignored(embedded, &patterns), "{embedded} is ignored");
    }
    // And what must not: build output, history, tests.
    for heavy in ["target", ".git", "tests/fixtures", "tests"] {
        assert!(
            is_ignored(heavy, &patterns),
            "{heavy} is sent to the builder"
        );
    }
}

#[test]
fn dependencies_are_built_in_a_layer_of_their_own_before_the_sources_are_copied() {
    let builder = stages().into_iter().next().expect("a builder stage");
    let position = |wanted: &dyn Fn(&Instruction) -> bool| {
        builder
            .iter()
            .position(wanted)
            .expect("instruction present")
    };
    let manifests = position(&|i| i.keyword == "COPY" && i.args.contains("Cargo.lock"));
    let deps_build = position(&|i| i.keyword == "RUN" && i.args.contains("cargo build"));
    let sources = position(&|i| i.keyword == "COPY" && i.args.starts_with("src"));
    assert!(
        manifests < deps_build && deps_build < sources,
        "{builder:?}"
    );
    let manifest_copy = &builder[manifests];
    assert!(
        !manifest_copy.args.contains(". ."),
        "the whole context is copied before the dependency build"
    );
    // The dummy targets cover every [[bench]] of Cargo.toml (cargo refuses a missing one).
    let cargo: toml::Value = toml::from_str(
        &std::fs::read_to_string(root().join("Cargo.toml")).expect("read Cargo.toml"),
    )
    .expect("Cargo.toml parses");
    let benches = cargo
        .get("bench")
        .and_then(toml::Value::as_array)
        .map_or(0, Vec::len);
    assert!(benches > 0);
    assert!(
        builder[deps_build].args.contains("bench") && builder[deps_build].args.contains("benches/"),
        "the dependency build creates the dummy benches"
    );
    assert!(
        cargo["bench"]
            .as_array()
            .expect("benches")
            .iter()
            .all(|b| b.get("path").is_none()),
        "a [[bench]] with its own path is not covered by the Dockerfile's dummy benches"
    );
}

#[test]
fn the_image_runs_the_marketo_sync_binary_as_a_non_root_user() {
    let binary = Path::new(env!("CARGO_BIN_EXE_marketo-sync"))
        .file_name()
        .and_then(|n| n.to_str())
        .expect("binary name")
        .to_owned();
    assert_eq!(binary, "marketo-sync");
    let builder = stages().into_iter().next().expect("builder");
    assert!(
        builder
            .iter()
            .any(|i| i.keyword == "RUN" && i.args.contains(&format!("--bin {binary}"))),
        "the builder builds --bin {binary}"
    );
    let runtime = runtime_stage();
    let copied = runtime
        .iter()
        .find(|i| i.keyword == "COPY" && i.args.contains("--from=builder"))
        .expect("the binary is copied from the builder");
    assert!(
        copied
            .args
            .contains(&format!("target/release/{binary} /usr/local/bin/{binary}")),
        "{copied:?}"
    );
    let entrypoint = runtime
        .iter()
        .find(|i| i.keyword == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    assert_eq!(entrypoint.args, format!("[\"{binary}\"]"));

    let user = runtime
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("a USER");
    assert!(
        !["root", "0", "0:0"].contains(&user.args.as_str()),
        "USER {}",
        user.args
    );
    let create = runtime
        .iter()
        .find(|i| i.keyword == "RUN" && i.args.contains("useradd"))
        .expect("the user is created");
    assert!(
        create.args.trim_end().ends_with(&user.args),
        "USER {} is the user created by useradd: {}",
        user.args,
        create.args
    );
    // The working directory (where the relative default store path lands) is the user's home,
    // which useradd --create-home makes writable for it.
    let workdir = runtime
        .iter()
        .rev()
        .find(|i| i.keyword == "WORKDIR")
        .expect("a WORKDIR");
    assert!(
        create.args.contains(&format!("--home {}", workdir.args)),
        "{create:?} vs {workdir:?}"
    );
    assert!(create.args.contains("--create-home"));
}

#[test]
fn the_image_holds_no_demo_files() {
    let runtime = runtime_stage();
    let copies = context_copies(&runtime);
    assert!(!copies.is_empty());
    for (sources, destination) in copies {
        for source in sources {
            let mut files = Vec::new();
            walk(&root().join(&source), &mut files);
            assert!(!files.is_empty(), "{source} holds no file");
            for file in files {
                let relative = file.strip_prefix(root()).expect("under the repository");
                let name = relative.to_string_lossy();
                assert!(
                    !name.contains("demo"),
                    "COPY {source} {destination} puts {name} in the image"
                );
            }
        }
    }
}

fn walk(path: &Path, files: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            walk(&entry.expect("entry").path(), files);
        }
    } else {
        files.push(path.to_path_buf());
    }
}

#[test]
fn the_health_check_uses_the_binary_and_nothing_installs_curl() {
    let runtime = runtime_stage();
    let check = runtime
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("a HEALTHCHECK");
    assert!(
        check.args.contains("CMD [\"marketo-sync\", \"health\"]"),
        "{}",
        check.args
    );
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("read");
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(!code.contains("curl"), "curl is still in the image");
    assert!(!code.contains("wget"));
}

#[test]
fn release_builds_carry_no_debug_info() {
    let cargo: toml::Value = toml::from_str(
        &std::fs::read_to_string(root().join("Cargo.toml")).expect("read Cargo.toml"),
    )
    .expect("Cargo.toml parses");
    let release = &cargo["profile"]["release"];
    assert_eq!(release.get("debug"), Some(&toml::Value::Boolean(false)));
    assert_eq!(release.get("strip"), Some(&toml::Value::Boolean(true)));
}

/// The settings files the image holds, copied into `dir` as the Dockerfile copies them.
fn image_config(dir: &Path) {
    for (sources, destination) in context_copies(&runtime_stage()) {
        let Some(relative) = destination.strip_prefix("/etc/marketo-sync") else {
            continue;
        };
        for source in sources {
            let target = dir.join(relative.trim_start_matches('/'));
            copy_tree(&root().join(&source), &target);
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("entry");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::copy(from, to).expect("copy");
    }
}

#[tokio::test]
async fn the_default_state_path_is_created_on_first_start() {
    // The image's settings name a relative SQLite file under a folder that does not exist yet.
    let config = tempfile::tempdir().expect("temp dir");
    image_config(config.path());
    // The image's default.toml names it (or leaves the built-in default).
    let text = std::fs::read_to_string(config.path().join("default.toml")).expect("read");
    let value: toml::Value = toml::from_str(&text).expect("the image's default.toml parses");
    let url = value
        .get("store")
        .and_then(|s| s.get("url"))
        .and_then(toml::Value::as_str)
        .map_or_else(
            || {
                marketo_sync::config::StoreSettings::default()
                    .url
                    .expose_secret()
                    .to_owned()
            },
            str::to_owned,
        );
    let relative = url
        .strip_prefix("sqlite://")
        .expect("the default store is SQLite");
    assert!(!relative.starts_with('/'), "{url}");
    assert!(relative.contains('/'), "{url} has a folder");

    // Open it as the container would from its WORKDIR (here: a fresh temp dir).
    let workdir = tempfile::tempdir().expect("temp dir");
    let file = workdir.path().join(relative);
    assert!(!file.parent().expect("parent").exists());
    let store = marketo_sync::store::open(&format!("sqlite://{}", file.display()))
        .await
        .expect("the store creates its folder");
    assert_eq!(store.backend(), "sqlite");
    assert!(file.is_file(), "{}", file.display());
}

#[tokio::test]
async fn a_folder_that_cannot_be_created_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let blocker = dir.path().join("state");
    std::fs::write(&blocker, "a file where the folder should be").expect("write");
    let url = format!("sqlite://{}", blocker.join("marketo-sync.db").display());
    let error = match marketo_sync::store::open(&url).await {
        Ok(_) => panic!("opened a store under a file"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&blocker.display().to_string()), "{error}");
}

/// The `MKSYNC__*` variables of the compose example's marketo-sync service.
fn compose_environment() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(root().join("deploy/compose.yaml")).expect("read compose.yaml");
    assert!(
        text.contains("image: postgres"),
        "the compose example runs PostgreSQL"
    );
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("MKSYNC__"))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

#[test]
fn the_compose_example_s_settings_are_real_and_load_with_the_image_config() {
    let environment = compose_environment();
    assert!(environment.len() >= 5, "{environment:?}");
    // The secrets are files Docker mounts under /run/secrets; stand-ins are written here.
    let secrets = tempfile::tempdir().expect("temp dir");
    let mut vars = HashMap::new();
    for (name, value) in &environment {
        let value = match value.strip_prefix("/run/secrets/") {
            Some(secret) => {
                let content = match secret {
                    "store_url" => "postgres://marketo_sync:pw@postgres:5432/marketo_sync",
                    "crm_url" => "postgres://crm:pw@crm-db:5432/crm",
                    _ => "a-secret-value-of-some-length",
                };
                let path = secrets.path().join(secret);
                std::fs::write(&path, content).expect("write secret");
                path.display().to_string()
            }
            None => value.clone(),
        };
        vars.insert(name.clone(), value);
    }
    let config = tempfile::tempdir().expect("temp dir");
    image_config(config.path());
    let source = SettingsSource::new(config.path(), None).with_vars(vars);
    let loaded = match load(&source) {
        Ok(loaded) => loaded,
        Err(error) => panic!("the compose example's settings do not load:\n{error}"),
    };
    let settings = &loaded.settings;
    assert!(
        settings
            .store
            .url
            .expose_secret()
            .starts_with("postgres://"),
        "the compose example keeps its state in PostgreSQL"
    );
    assert_eq!(settings.http.listen.to_string(), "0.0.0.0:8080");
    assert!(settings.marketo.client_secret.is_some());
    assert!(settings.http.webhook_secret.is_some());
}

/// A running `marketo-sync demo` (a daemon with its HTTP listener), killed on drop.
struct RunningDemo {
    child: std::process::Child,
    base_url: String,
    _state: tempfile::TempDir,
}

impl RunningDemo {
    fn start() -> RunningDemo {
        let state = tempfile::tempdir().expect("temp dir");
        let mut child = Command::new(env!("CARGO_BIN_EXE_marketo-sync"))
            .args(["demo", "--interval", "60", "--listen", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(state.path())
            .current_dir(state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base_url = loop {
            let line = lines
                .next()
                .expect("the demo prints its banner")
                .expect("read");
            if let Some(url) = line.trim().strip_prefix("status page:") {
                break url.trim().trim_end_matches('/').to_owned();
            }
        };
        // Keep draining the narration so the demo never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        RunningDemo {
            child,
            base_url,
            _state: state,
        }
    }
}

impl Drop for RunningDemo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn health(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_marketo-sync"));
    command
        .arg("health")
        .args(args)
        .env_remove("MKSYNC_HEALTH_URL")
        .env_remove("MKSYNC__HTTP__LISTEN");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run health")
}

#[test]
fn the_health_command_exits_0_for_a_running_daemon_and_1_when_nothing_answers() {
    let demo = RunningDemo::start();
    let output = health(&["--url", &demo.base_url], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with(&format!("ok: {}/healthz 200", demo.base_url)),
        "{stdout}"
    );

    // As in the container: no --url, the address from MKSYNC__HTTP__LISTEN (0.0.0.0 is asked
    // on the loopback address).
    let port = demo.base_url.rsplit(':').next().expect("port").to_owned();
    let listen = format!("0.0.0.0:{port}");
    let output = health(&[], &[("MKSYNC__HTTP__LISTEN", &listen)]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    // /readyz answers once the daemon has settled (lease taken).
    let mut ready = None;
    for _ in 0..100 {
        let output = health(&["--ready", "--url", &demo.base_url], &[]);
        if output.status.success() {
            ready = Some(output);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ready = ready.expect("the daemon becomes ready");
    assert!(
        String::from_utf8_lossy(&ready.stdout).contains("/readyz 200"),
        "{ready:?}"
    );
    drop(demo);

    // Nothing listens there any more.
    let closed = format!("http://127.0.0.1:{port}");
    let output = health(&["--url", &closed, "--timeout", "2"], &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{closed}/healthz")), "{stderr}");
}
