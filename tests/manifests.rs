//! The Kubernetes manifests in `k8s/` are checked here, without a cluster.
//!
//! Each kustomization is rendered with `kubectl kustomize` (the one on PATH,
//! or `MESHGATE_KUBECTL`; `scripts/ensure-services.sh` installs Debian's
//! `kubernetes-client` when there is none), every object is parsed into its
//! `k8s-openapi` type and written back, and any difference between the two is
//! a field the Kubernetes API does not know: a typo that `kubectl apply` would
//! reject, or worse, silently drop. Then the meshgate objects are held
//! against the binary itself: the env names it reads are taken from the
//! `env = "..."` attributes in `src/config.rs` and `src/main.rs`, so renaming
//! a setting without updating `k8s/` fails here.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    path::PathBuf,
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, StatefulSet},
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::Job,
        core::v1::{
            ConfigMap, Container, EnvVar, Namespace, PodSpec, PodTemplateSpec, Probe, Secret,
            Service, ServiceAccount,
        },
        networking::v1::{Ingress, NetworkPolicy},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
    Resource,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use serde_json::Value;

/// The kustomizations that must render: the base and every overlay.
const KUSTOMIZATIONS: &[&str] = &["k8s", "k8s/overlays/example", "k8s/overlays/redis-cluster"];

/// The Deployment and Job that run the meshgate binary.
const DEPLOYMENT: &str = "meshgate";
const MIGRATE_JOB: &str = "meshgate-migrate";

/// Idle timeout a proxy must allow long-lived WebSocket/SSE connections.
const MIN_PROXY_TIMEOUT_SECS: u64 = 3600;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Rendering and schema check
// ---------------------------------------------------------------------------

/// `kubectl kustomize DIR`, as JSON values, one per object.
fn render(dir: &str) -> Vec<Value> {
    let kubectl = std::env::var("MESHGATE_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let out = match Command::new(&kubectl)
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`{kubectl}` not found: tests/manifests.rs renders k8s/ with `kubectl kustomize`. \
             Install it with `bash scripts/ensure-services.sh` (Debian: `apt-get install \
             kubernetes-client`), or point MESHGATE_KUBECTL at a kubectl binary."
        ),
        Err(e) => panic!("cannot run `{kubectl} kustomize {dir}`: {e}"),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "`{kubectl} kustomize {dir}` failed ({}):\n{stderr}",
        out.status
    );
    let yaml = String::from_utf8(out.stdout).expect("kustomize output is UTF-8");
    let objects = parse_yaml_stream(&yaml).unwrap_or_else(|e| panic!("{dir}: {e}"));
    assert!(
        !objects.is_empty(),
        "`kubectl kustomize {dir}` rendered nothing"
    );
    objects
}

/// Every non-empty document of a YAML stream.
fn parse_yaml_stream(yaml: &str) -> Result<Vec<Value>, String> {
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).map_err(|e| format!("invalid YAML: {e}"))?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// Parses `object` as a `T` and writes it back; any difference is a field
/// (or value) the type does not know. k8s-openapi's types ignore unknown
/// fields when deserialising, hence the round trip.
fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(object.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut diffs = Vec::new();
    diff(
        "",
        &without_nulls(object),
        &without_nulls(&back),
        &mut diffs,
    );
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("; "))
    }
}

/// Checks one object of a known kind; the key is `(apiVersion, kind)`.
type SchemaCheck = fn(&Value) -> Result<(), String>;
type KindKey = (&'static str, &'static str);

fn kind_of<T: Resource + DeserializeOwned + Serialize>() -> (KindKey, SchemaCheck) {
    ((T::API_VERSION, T::KIND), round_trip::<T>)
}

/// The kinds `k8s/` may contain; anything else fails (an unknown kind, or a
/// known one at an API version the cluster no longer serves).
fn known_kinds() -> BTreeMap<KindKey, SchemaCheck> {
    BTreeMap::from([
        kind_of::<ConfigMap>(),
        kind_of::<Deployment>(),
        kind_of::<HorizontalPodAutoscaler>(),
        kind_of::<Ingress>(),
        kind_of::<Job>(),
        kind_of::<Namespace>(),
        kind_of::<NetworkPolicy>(),
        kind_of::<PodDisruptionBudget>(),
        kind_of::<Secret>(),
        kind_of::<Service>(),
        kind_of::<ServiceAccount>(),
        kind_of::<StatefulSet>(),
    ])
}

/// Checks one object against the Kubernetes API types.
fn check_schema(object: &Value) -> Result<(), String> {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let check = known_kinds()
        .get(&(api_version, kind))
        .copied()
        .ok_or_else(|| format!("unknown kind {api_version}/{kind}"))?;
    check(object).map_err(|e| format!("{api_version}/{kind}: {e}"))
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Where `rendered` and `typed` differ, as readable lines.
fn diff(path: &str, rendered: &Value, typed: &Value, out: &mut Vec<String>) {
    match (rendered, typed) {
        (Value::Object(r), Value::Object(t)) => {
            for (key, value) in r {
                let at = format!("{path}.{key}");
                match t.get(key) {
                    Some(back) => diff(&at, value, back, out),
                    None => out.push(format!("{at}: unknown field")),
                }
            }
            for key in t.keys().filter(|k| !r.contains_key(*k)) {
                out.push(format!("{path}.{key}: added by the type"));
            }
        }
        (Value::Array(r), Value::Array(t)) if r.len() == t.len() => {
            for (i, (value, back)) in r.iter().zip(t).enumerate() {
                diff(&format!("{path}[{i}]"), value, back, out);
            }
        }
        _ if rendered == typed => {}
        _ => out.push(format!("{path}: {rendered} became {typed}")),
    }
}

// ---------------------------------------------------------------------------
// What the binary reads and serves (from its source)
// ---------------------------------------------------------------------------

fn source(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The names in every `env = "NAME"` attribute of a source file.
fn env_names(src: &str) -> BTreeSet<String> {
    src.split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(name, _)| name.to_owned()))
        .collect()
}

/// The clap default of the setting read from `env`, from `src/config.rs`.
fn config_default(env: &str) -> Option<String> {
    let src = source("src/config.rs");
    let at = src.find(&format!("env = \"{env}\""))?;
    let attr = &src[at..at + src[at..].find(")]")?];
    let value = attr
        .split_once("default_value_t = ")
        .or_else(|| attr.split_once("default_value = "))?
        .1;
    let value = value.split([',', '\n']).next()?.trim();
    Some(value.trim_matches('"').replace('_', ""))
}

/// What `meshgate serve` and `meshgate migrate` read from the environment.
struct BinaryEnv {
    serve: BTreeSet<String>,
    migrate: BTreeSet<String>,
}

fn binary_env() -> BinaryEnv {
    let main = source("src/main.rs");
    // tracing's EnvFilter reads RUST_LOG in every subcommand.
    let mut common = BTreeSet::new();
    if main.contains("EnvFilter::try_from_default_env") {
        common.insert("RUST_LOG".to_owned());
    }
    let migrate: BTreeSet<String> = env_names(&main).into_iter().chain(common).collect();
    let serve = env_names(&source("src/config.rs"))
        .into_iter()
        .chain(migrate.iter().cloned())
        .collect::<BTreeSet<_>>();
    assert!(
        serve.contains("DATABASE_URL") && serve.contains("REDIS_URL") && serve.len() > 10,
        "could not read the env names from src/config.rs: {serve:?}"
    );
    assert!(migrate.contains("DATABASE_URL"), "{migrate:?}");
    BinaryEnv { serve, migrate }
}

// ---------------------------------------------------------------------------
// Looking things up in a render
// ---------------------------------------------------------------------------

/// The one object of type `T` named `name`.
fn get<T: Resource + DeserializeOwned>(objects: &[Value], name: &str) -> T {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == T::KIND && o["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected one {} named {name}", T::KIND);
    serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{}: {e}", T::KIND))
}

/// Every object of type `T`.
fn all<T: Resource + DeserializeOwned>(objects: &[Value]) -> Vec<T> {
    objects
        .iter()
        .filter(|o| o["kind"] == T::KIND)
        .map(|o| serde_json::from_value(o.clone()).unwrap_or_else(|e| panic!("{}: {e}", T::KIND)))
        .collect()
}

fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn pod_template(deployment: &Deployment) -> &PodTemplateSpec {
    &deployment.spec.as_ref().expect("Deployment.spec").template
}

fn pod_spec(template: &PodTemplateSpec) -> &PodSpec {
    template.spec.as_ref().expect("pod template spec")
}

fn pod_labels(template: &PodTemplateSpec) -> BTreeMap<String, String> {
    template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// The only container of a pod (meshgate pods run one).
fn only_container<'a>(spec: &'a PodSpec, what: &str) -> &'a Container {
    assert_eq!(spec.containers.len(), 1, "{what}: expected one container");
    &spec.containers[0]
}

/// Whether a label selector's `matchLabels` (non-empty) select `labels`.
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A container's environment: name → literal value (None when it comes from
/// a reference), with `envFrom` ConfigMaps resolved from the render.
fn container_env(objects: &[Value], c: &Container) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        assert!(
            from.secret_ref.is_none(),
            "{}: envFrom secretRef hides which names are set; use env[].valueFrom.secretKeyRef",
            c.name
        );
        assert!(from.prefix.is_none(), "{}: envFrom prefix", c.name);
        let map_name = &from
            .config_map_ref
            .as_ref()
            .expect("envFrom configMapRef")
            .name;
        let map: ConfigMap = get(objects, map_name);
        for (k, v) in map.data.unwrap_or_default() {
            env.insert(k, Some(v));
        }
    }
    for var in c.env.iter().flatten() {
        env.insert(var.name.clone(), var.value.clone());
    }
    env
}

fn env_var<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
    c.env
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{}: env {name} is not set", c.name))
}

/// The Secret name and key an env var is read from.
fn secret_ref(c: &Container, name: &str) -> (String, String) {
    let r = env_var(c, name)
        .value_from
        .as_ref()
        .and_then(|f| f.secret_key_ref.as_ref())
        .unwrap_or_else(|| panic!("{}: {name} must come from a Secret (secretKeyRef)", c.name));
    (r.name.clone(), r.key.clone())
}

/// The port a probe targets, resolved against the container's named ports.
fn probe_port(c: &Container, probe: &Probe) -> (String, i32) {
    let get = probe.http_get.as_ref().expect("an httpGet probe");
    let port = match &get.port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            c.ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("probe port {name} is no port of {}", c.name))
                .container_port
        }
    };
    (get.path.clone().unwrap_or_default(), port)
}

fn assert_hardened(spec: &PodSpec, c: &Container, what: &str) {
    let pod = spec.security_context.as_ref();
    let sc = c.security_context.as_ref();
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod.and_then(|p| p.run_as_non_root));
    assert_eq!(non_root, Some(true), "{what}: runAsNonRoot");
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.and_then(|p| p.run_as_user));
    assert!(
        uid.is_some_and(|u| u != 0),
        "{what}: runAsUser must be a non-zero uid"
    );
    assert_eq!(
        sc.and_then(|s| s.read_only_root_filesystem),
        Some(true),
        "{what}: readOnlyRootFilesystem"
    );
    assert_eq!(
        sc.and_then(|s| s.allow_privilege_escalation),
        Some(false),
        "{what}: allowPrivilegeEscalation"
    );
    let resources = c.resources.as_ref().expect("resources");
    for (kind, set) in [
        ("requests", &resources.requests),
        ("limits", &resources.limits),
    ] {
        let set = set.as_ref();
        for res in ["cpu", "memory"] {
            assert!(
                set.is_some_and(|s| s.contains_key(res)),
                "{what}: resources.{kind}.{res} is not set"
            );
        }
    }
}

fn seconds_of_prestop_sleep(c: &Container) -> i64 {
    let Some(pre_stop) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) else {
        return 0;
    };
    if let Some(sleep) = &pre_stop.sleep {
        return sleep.seconds;
    }
    let command = pre_stop
        .exec
        .as_ref()
        .and_then(|e| e.command.clone())
        .unwrap_or_default();
    match command.as_slice() {
        [sleep, secs] if sleep.ends_with("sleep") => {
            secs.parse().expect("preStop sleep takes whole seconds")
        }
        other => panic!("preStop should be a plain sleep, not {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

#[test]
fn every_rendered_object_is_a_kubernetes_type_with_no_unknown_field() {
    for dir in KUSTOMIZATIONS {
        let errors: Vec<String> = render(dir)
            .iter()
            .filter_map(|o| {
                check_schema(o)
                    .err()
                    .map(|e| format!("{} {}: {e}", o["kind"], o["metadata"]["name"]))
            })
            .collect();
        assert!(errors.is_empty(), "{dir}:\n{}", errors.join("\n"));
    }
}

#[test]
fn schema_check_catches_unknown_fields_kinds_and_bad_values() {
    let objects = render("k8s");
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment");
    check_schema(deployment).expect("the rendered Deployment is valid");

    let mut typo = deployment.clone();
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] =
        "/readyz".into();
    let err = check_schema(&typo).unwrap_err();
    assert!(err.contains("httpGet.pathh: unknown field"), "{err}");

    let mut misplaced = deployment.clone();
    misplaced["spec"]["terminationGracePeriodSeconds"] = 45.into();
    let err = check_schema(&misplaced).unwrap_err();
    assert!(err.contains("spec.terminationGracePeriodSeconds"), "{err}");

    let mut wrong_type = deployment.clone();
    wrong_type["spec"]["replicas"] = "two".into();
    assert!(check_schema(&wrong_type).is_err());

    let mut old_api = deployment.clone();
    old_api["apiVersion"] = "extensions/v1beta1".into();
    assert!(check_schema(&old_api).unwrap_err().contains("unknown kind"));
}

#[test]
fn deployment_serves_on_the_port_and_probe_paths_the_binary_has() {
    let routes = source("src/http/mod.rs");
    for path in ["/healthz", "/readyz"] {
        assert!(
            routes.contains(&format!(".at(\"{path}\"")),
            "src/http/mod.rs no longer serves {path}"
        );
    }
    for dir in KUSTOMIZATIONS {
        let objects = render(dir);
        let deployment: Deployment = get(&objects, DEPLOYMENT);
        let template = pod_template(&deployment);
        let c = only_container(pod_spec(template), dir);
        let env = container_env(&objects, c);

        let listen = match env.get("MESHGATE_LISTEN") {
            Some(v) => v.clone().expect("MESHGATE_LISTEN as a literal value"),
            None => config_default("MESHGATE_LISTEN").expect("default of MESHGATE_LISTEN"),
        };
        let port: i32 = listen
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("{dir}: MESHGATE_LISTEN={listen} has no port"));
        let ports: Vec<i32> = c.ports.iter().flatten().map(|p| p.container_port).collect();
        assert_eq!(
            ports,
            [port],
            "{dir}: container ports vs MESHGATE_LISTEN={listen}"
        );

        let live = c.liveness_probe.as_ref().expect("livenessProbe");
        let ready = c.readiness_probe.as_ref().expect("readinessProbe");
        assert_eq!(
            probe_port(c, live),
            ("/healthz".to_owned(), port),
            "{dir}: liveness"
        );
        assert_eq!(
            probe_port(c, ready),
            ("/readyz".to_owned(), port),
            "{dir}: readiness"
        );

        if let Some(scrape_port) = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("prometheus.io/port"))
        {
            assert_eq!(scrape_port, &port.to_string(), "{dir}: prometheus.io/port");
        }
    }
}

#[test]
fn deployment_sets_only_env_names_the_binary_reads() {
    let binary = binary_env();
    for dir in KUSTOMIZATIONS {
        let objects = render(dir);
        let deployment: Deployment = get(&objects, DEPLOYMENT);
        let c = only_container(pod_spec(pod_template(&deployment)), dir);
        assert!(
            c.command.is_none(),
            "{dir}: the image's entrypoint runs meshgate"
        );
        if let Some(args) = &c.args {
            assert_eq!(
                args.first().map(String::as_str),
                Some("serve"),
                "{dir}: args"
            );
        }
        let env = container_env(&objects, c);
        let unknown: Vec<&String> = env.keys().filter(|k| !binary.serve.contains(*k)).collect();
        assert!(
            unknown.is_empty(),
            "{dir}: `meshgate serve` reads no {unknown:?} (it reads {:?})",
            binary.serve
        );

        secret_ref(c, "DATABASE_URL");
        secret_ref(c, "REDIS_URL");
        let pod_id = env_var(c, "MESHGATE_POD_ID")
            .value_from
            .as_ref()
            .and_then(|f| f.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(
            pod_id,
            Some("metadata.name"),
            "{dir}: MESHGATE_POD_ID from the pod name"
        );
        assert_eq!(
            env.get("MESHGATE_LOG_JSON"),
            Some(&Some("true".to_owned())),
            "{dir}: JSON logs in Kubernetes"
        );
        let on_start = env.get("MESHGATE_MIGRATE_ON_START");
        assert!(
            on_start.is_none() || on_start == Some(&Some("false".to_owned())),
            "{dir}: migrations run in the Job, not on start ({on_start:?})"
        );
    }
}

#[test]
fn deployment_is_hardened_replicated_and_drains_within_its_grace_period() {
    for dir in KUSTOMIZATIONS {
        let objects = render(dir);
        let deployment: Deployment = get(&objects, DEPLOYMENT);
        let replicas = deployment.spec.as_ref().and_then(|s| s.replicas);
        assert!(
            replicas.is_some_and(|r| r >= 2),
            "{dir}: replicas {replicas:?}"
        );
        let spec = pod_spec(pod_template(&deployment));
        let c = only_container(spec, dir);
        assert_hardened(spec, c, dir);

        let env = container_env(&objects, c);
        let drain_ms: i64 = match env.get("MESHGATE_DRAIN_MS") {
            Some(v) => v.clone().expect("MESHGATE_DRAIN_MS as a literal value"),
            None => config_default("MESHGATE_DRAIN_MS").expect("default of MESHGATE_DRAIN_MS"),
        }
        .parse()
        .expect("MESHGATE_DRAIN_MS is a number");
        let pre_stop_ms = seconds_of_prestop_sleep(c) * 1000;
        let grace_ms = spec.termination_grace_period_seconds.unwrap_or(30) * 1000;
        assert!(
            grace_ms > drain_ms + pre_stop_ms,
            "{dir}: terminationGracePeriodSeconds ({grace_ms} ms) must exceed the preStop \
             sleep ({pre_stop_ms} ms) plus MESHGATE_DRAIN_MS ({drain_ms} ms)"
        );
    }
}

#[test]
fn migration_job_runs_migrate_with_the_deployment_image() {
    let binary = binary_env();
    for dir in KUSTOMIZATIONS {
        let objects = render(dir);
        let deployment: Deployment = get(&objects, DEPLOYMENT);
        let server = only_container(pod_spec(pod_template(&deployment)), dir);
        let job: Job = get(&objects, MIGRATE_JOB);
        let template = &job.spec.as_ref().expect("Job.spec").template;
        let spec = pod_spec(template);
        let c = only_container(spec, dir);

        assert!(
            c.command.is_none(),
            "{dir}: the image's entrypoint runs meshgate"
        );
        assert_eq!(
            c.args.as_deref(),
            Some(&["migrate".to_owned()][..]),
            "{dir}: Job args"
        );
        assert_eq!(
            c.image, server.image,
            "{dir}: the Job migrates for the image it serves"
        );
        assert_hardened(spec, c, &format!("{dir} Job"));
        let unknown: Vec<String> = container_env(&objects, c)
            .into_keys()
            .filter(|k| !binary.migrate.contains(k))
            .collect();
        assert!(
            unknown.is_empty(),
            "{dir}: `meshgate migrate` reads no {unknown:?}"
        );
        assert_eq!(
            secret_ref(c, "DATABASE_URL"),
            secret_ref(server, "DATABASE_URL"),
            "{dir}: the Job migrates the database the pods use"
        );
        // The Job's pods must not count as replicas (Service, PDB, HPA).
        let server_selector = deployment
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .clone();
        assert!(
            !selects(&server_selector.unwrap_or_default(), &pod_labels(template)),
            "{dir}: the Deployment's selector matches the Job's pods"
        );
    }
}

#[test]
fn service_hpa_pdb_and_ingress_point_at_the_meshgate_pods() {
    for dir in KUSTOMIZATIONS {
        let objects = render(dir);
        let deployment: Deployment = get(&objects, DEPLOYMENT);
        let template = pod_template(&deployment);
        let labels = pod_labels(template);
        let job: Job = get(&objects, MIGRATE_JOB);
        let job_labels = pod_labels(&job.spec.as_ref().unwrap().template);
        let c = only_container(pod_spec(template), dir);

        let service: Service = get(&objects, DEPLOYMENT);
        let service_spec = service.spec.as_ref().expect("Service.spec");
        let selector = service_spec.selector.clone().unwrap_or_default();
        assert!(
            selects(&selector, &labels),
            "{dir}: Service selects the pods"
        );
        assert!(
            !selects(&selector, &job_labels),
            "{dir}: Service selects the Job"
        );
        let service_ports = service_spec.ports.clone().unwrap_or_default();
        assert!(!service_ports.is_empty(), "{dir}: Service has no port");
        for p in &service_ports {
            match &p.target_port {
                Some(IntOrString::String(name)) => assert!(
                    c.ports
                        .iter()
                        .flatten()
                        .any(|cp| cp.name.as_ref() == Some(name)),
                    "{dir}: Service targets port {name}, which the container does not name"
                ),
                other => panic!("{dir}: Service should target the named port, not {other:?}"),
            }
        }

        let hpa: HorizontalPodAutoscaler = get(&objects, DEPLOYMENT);
        let hpa = hpa.spec.expect("HPA spec");
        let target = &hpa.scale_target_ref;
        assert_eq!(
            (
                target.api_version.as_deref(),
                target.kind.as_str(),
                target.name.as_str()
            ),
            (Some("apps/v1"), "Deployment", DEPLOYMENT),
            "{dir}: HPA target"
        );
        assert!(
            hpa.min_replicas.is_some_and(|m| m >= 2),
            "{dir}: HPA minReplicas"
        );
        assert!(
            hpa.max_replicas >= hpa.min_replicas.unwrap_or(1),
            "{dir}: HPA maxReplicas"
        );
        let on_cpu =
            hpa.metrics.iter().flatten().any(|m| {
                m.type_ == "Resource" && m.resource.as_ref().is_some_and(|r| r.name == "cpu")
            });
        assert!(on_cpu, "{dir}: HPA scales on CPU");

        let pdb: PodDisruptionBudget = get(&objects, DEPLOYMENT);
        let pdb = pdb.spec.expect("PDB spec");
        let pdb_selector = pdb
            .selector
            .and_then(|s| s.match_labels)
            .unwrap_or_default();
        assert!(
            selects(&pdb_selector, &labels),
            "{dir}: PDB selects the pods"
        );
        assert!(
            !selects(&pdb_selector, &job_labels),
            "{dir}: PDB selects the Job"
        );
        assert!(
            pdb.max_unavailable.is_some() || pdb.min_available.is_some(),
            "{dir}: PDB sets a budget"
        );

        let ingress: Ingress = get(&objects, DEPLOYMENT);
        let annotations = ingress.metadata.annotations.clone().unwrap_or_default();
        for key in ["proxy-read-timeout", "proxy-send-timeout"] {
            let key = format!("nginx.ingress.kubernetes.io/{key}");
            let secs: u64 = annotations
                .get(&key)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{dir}: Ingress needs {key} (seconds)"));
            assert!(
                secs >= MIN_PROXY_TIMEOUT_SECS,
                "{dir}: {key}={secs} closes idle WebSockets"
            );
        }
        let backends: Vec<_> = ingress
            .spec
            .iter()
            .flat_map(|s| s.rules.iter().flatten())
            .flat_map(|r| r.http.iter().flat_map(|h| h.paths.iter()))
            .map(|p| p.backend.service.clone().expect("a Service backend"))
            .collect();
        assert!(!backends.is_empty(), "{dir}: Ingress has no backend");
        for b in backends {
            assert_eq!(b.name, name_of(&service.metadata), "{dir}: Ingress backend");
            let port = b.port.expect("backend port");
            assert!(
                service_ports
                    .iter()
                    .any(|p| (port.name.is_some() && p.name == port.name)
                        || Some(p.port) == port.number),
                "{dir}: Ingress backend port {port:?} is no port of the Service"
            );
        }
    }
}

#[test]
fn secret_example_has_the_keys_the_pods_read_and_fits_the_example_overlay() {
    let path = "k8s/base/secret.example.yaml";
    let docs = parse_yaml_stream(&source(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one Secret");
    check_schema(&docs[0]).unwrap_or_else(|e| panic!("{path}: {e}"));
    let secret: Secret = serde_json::from_value(docs[0].clone()).unwrap();
    let values = secret.string_data.clone().expect("stringData");

    let objects = render("k8s/overlays/example");
    assert!(
        !objects
            .iter()
            .any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == name_of(&secret.metadata)),
        "the real Secret must not be part of a kustomization"
    );
    let deployment: Deployment = get(&objects, DEPLOYMENT);
    let job: Job = get(&objects, MIGRATE_JOB);
    let server = only_container(pod_spec(pod_template(&deployment)), "Deployment");
    let migrate = only_container(pod_spec(&job.spec.as_ref().unwrap().template), "Job");
    for (c, name) in [
        (server, "DATABASE_URL"),
        (server, "REDIS_URL"),
        (migrate, "DATABASE_URL"),
    ] {
        let (secret_name, key) = secret_ref(c, name);
        assert_eq!(
            secret_name,
            name_of(&secret.metadata),
            "{name}: Secret name"
        );
        assert!(values.contains_key(&key), "{path} has no key {key}");
    }

    // Its URLs point at the dev datastores the example overlay deploys.
    let services: BTreeMap<String, Vec<i32>> = all::<Service>(&objects)
        .into_iter()
        .map(|s| {
            let ports = s
                .spec
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .map(|p| p.port);
            (name_of(&s.metadata).to_owned(), ports.collect())
        })
        .collect();
    for (key, url) in &values {
        let (_, rest) = url.split_once("://").expect("a URL");
        let authority = rest.split('/').next().unwrap_or_default();
        let host_port = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = host_port.split_once(':').expect("host:port");
        let port: i32 = port.parse().expect("a port number");
        assert!(
            services
                .get(host)
                .is_some_and(|ports| ports.contains(&port)),
            "{path}: {key} names {host}:{port}, no Service of k8s/overlays/example ({services:?})"
        );
    }
    let dev_password: Secret = get(&objects, "meshgate-dev-postgres");
    let password = &dev_password.string_data.expect("stringData")["POSTGRES_PASSWORD"];
    assert!(
        values["DATABASE_URL"].contains(&format!(":{password}@")),
        "{path}: DATABASE_URL does not carry the dev PostgreSQL password"
    );
}

#[test]
fn base_holds_no_dev_datastore() {
    let objects = render("k8s");
    for kind in ["StatefulSet", "Secret", "Namespace"] {
        let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
        assert!(found.is_empty(), "k8s/ base holds a {kind}: {found:?}");
    }
    let deployments: Vec<String> = all::<Deployment>(&objects)
        .iter()
        .map(|d| name_of(&d.metadata).to_owned())
        .collect();
    assert_eq!(deployments, [DEPLOYMENT], "the base runs meshgate only");
}

/// k8s/README.md deploys in two steps: `-l 'app.kubernetes.io/component!=server'`
/// (migration Job and what it needs) first, the rest after the Job completed.
#[test]
fn pre_rollout_step_holds_the_migration_job_and_what_it_needs_but_no_server() {
    const SERVER: (&str, &str) = ("app.kubernetes.io/component", "server");
    for dir in KUSTOMIZATIONS {
        let objects = render(dir);
        let (server, before): (Vec<&Value>, Vec<&Value>) = objects
            .iter()
            .partition(|o| o["metadata"]["labels"][SERVER.0] == SERVER.1);
        let names = |objs: &[&Value], kind: &str| -> BTreeSet<String> {
            objs.iter()
                .filter(|o| o["kind"] == kind)
                .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
                .collect()
        };
        assert!(
            names(&before, "Job").contains(MIGRATE_JOB),
            "{dir}: Job after rollout"
        );
        assert!(
            names(&server, "Deployment").contains(DEPLOYMENT),
            "{dir}: server early"
        );
        let job: Job = get(&objects, MIGRATE_JOB);
        let spec = pod_spec(&job.spec.as_ref().unwrap().template);
        if let Some(account) = &spec.service_account_name {
            assert!(
                names(&before, "ServiceAccount").contains(account),
                "{dir}: the Job's ServiceAccount {account} comes only with the server"
            );
        }
    }
}
