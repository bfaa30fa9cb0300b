//! TLS to Redis: a private `redis-server` that only speaks TLS, with a CA
//! made for the test (openssl). Pods given `rediss://` and the CA file route
//! commands over it; without the CA they refuse to start, saying why.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::{
    client::{message, Daemon},
    harness::{eventually, TestEnv},
};

struct TlsRedis {
    port: u16,
    dir: PathBuf,
    _child: Child,
}

fn openssl(dir: &PathBuf, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (Debian package openssl) must be installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TlsRedis {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("meshgate-tls-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=meshgate test CA",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .current_dir(&dir)
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--tls-port", &port.to_string()])
            .args([
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
            ])
            .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed");
        let ca = dir.join("ca.crt");
        eventually(Duration::from_secs(10), "TLS redis up", || async {
            let out = Command::new("redis-cli")
                .args(["--tls", "--cacert"])
                .arg(&ca)
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .await
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .contains("PONG")
                .then_some(())
        })
        .await;
        Self {
            port,
            dir,
            _child: child,
        }
    }

    fn url(&self) -> String {
        format!("--redis-url=rediss://127.0.0.1:{}", self.port)
    }

    fn ca(&self) -> String {
        format!("--redis-tls-ca-file={}", self.dir.join("ca.crt").display())
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn pods_route_commands_over_tls_to_redis_and_refuse_an_untrusted_server() {
    let env = TestEnv::new().await;
    let redis = TlsRedis::start().await;

    // Without the test CA the server's certificate is not trusted.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        meshgate::start(env.config(&[&redis.url()]), listener),
    )
    .await
    .expect("start gives up instead of hanging");
    let Err(err) = refused else {
        panic!("started without trusting the server's CA");
    };
    let err = err.to_string();
    assert!(err.to_lowercase().contains("redis"), "{err}");

    let (a, b) = (
        env.pod_with(&[&redis.url(), &redis.ca()]).await,
        env.pod_with(&[&redis.url(), &redis.ca()]).await,
    );
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let s = b.state();
    meshgate::cluster::routing::send_command(&s.redis, &s.metrics, d.id(), &message("over tls"))
        .await
        .expect("routed over TLS");
    let got = d.recv().await;
    assert_eq!(got["message"], "over tls");
    for pod in [&a, &b] {
        eventually(Duration::from_secs(10), "pod ready", || async {
            pod.state().liveness.check(Duration::from_secs(2)).ok()
        })
        .await;
    }
}
