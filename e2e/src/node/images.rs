//! Container images for the node, made without a registry or buildah: a
//! root filesystem in a directory becomes a one-layer OCI image archive
//! (`tar`, then the layout's JSON written here), which `ctr images import`
//! loads into the node's containerd under the name pods ask for.
//!
//! * [`pause_image`]: the sandbox image, a statically linked `pause` built
//!   with `gcc -static`.
//! * [`drover_image`]: the operator's and the worker's images, laid out by
//!   `images/rootfs.sh` exactly as a release image is, from the binaries the
//!   tests build.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;
use sha2::{Digest, Sha256};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// The pause program: sleeps until told to stop, and reaps any child that
/// ends up with it (it is the PID namespace's init when pods share one).
const PAUSE_SOURCE: &str = r#"#include <signal.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction action = {0};
    action.sa_handler = stop;
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    action.sa_handler = reap;
    action.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &action, NULL);
    for (;;) {
        pause();
    }
}
"#;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{context} {}", path.display())]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

fn io_err(context: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImageError + use<> {
    let path = path.to_path_buf();
    move |source| ImageError::Io {
        context,
        path,
        source,
    }
}

/// What goes into an image besides its files.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The full reference containerd stores it under, e.g.
    /// `docker.io/library/drover-worker:0.1.0` (what `drover-worker:0.1.0` in
    /// a pod spec normalises to).
    pub reference: String,
    pub user: String,
    pub entrypoint: Vec<String>,
    pub labels: Vec<(String, String)>,
}

impl ImageSpec {
    /// The tag: the part after the last `:` of the reference.
    fn tag(&self) -> &str {
        self.reference
            .rsplit_once(':')
            .map_or("latest", |(_, tag)| tag)
    }
}

/// Builds the pause image's archive in `work_dir` and returns its path.
pub fn pause_image(work_dir: &Path) -> Result<PathBuf, ImageError> {
    let rootfs = work_dir.join("pause-rootfs");
    recreate_dir(&rootfs)?;
    let source = work_dir.join("pause.c");
    fs::write(&source, PAUSE_SOURCE).map_err(io_err("cannot write", &source))?;
    let mut gcc = Command::new("gcc");
    gcc.args(["-static", "-O2", "-s", "-o"])
        .arg(rootfs.join("pause"))
        .arg(&source);
    run(&mut gcc)?;
    let spec = ImageSpec {
        reference: super::config::PAUSE_IMAGE.to_owned(),
        user: "65535:65535".to_owned(),
        entrypoint: vec!["/pause".to_owned()],
        labels: vec![],
    };
    let archive = work_dir.join("pause.oci.tar");
    write_oci_archive(&rootfs, &spec, work_dir, &archive)?;
    fs::remove_dir_all(&rootfs).map_err(io_err("cannot remove", &rootfs))?;
    Ok(archive)
}

/// Builds the image of a Drover binary (`drover-operator`, `drover-worker`)
/// as images/build.sh does: `images/rootfs.sh` lays out the root filesystem
/// (the binary, the libraries it links, the CA bundle, user 65532), and the
/// image runs the binary as 65532. The debug information of a test build is
/// stripped (a release build has none; it would triple the image).
///
/// Archives are cached in `cache_dir` by a hash of the binary, rootfs.sh and
/// the spec, so an unchanged binary is packed once.
pub fn drover_image(
    binary: &Path,
    spec: &ImageSpec,
    cache_dir: &Path,
) -> Result<PathBuf, ImageError> {
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".to_owned());
    let rootfs_script = crate::workspace_root().join("images").join("rootfs.sh");
    let key = cache_key(binary, &rootfs_script, spec)?;
    fs::create_dir_all(cache_dir).map_err(io_err("cannot create", cache_dir))?;
    let archive = cache_dir.join(format!("{name}-{key}.oci.tar"));
    if archive.exists() {
        return Ok(archive);
    }
    // Per process: test binaries running side by side may pack the same image.
    let work = cache_dir.join(format!("{name}-{key}.partial-{}", std::process::id()));
    recreate_dir(&work)?;
    let rootfs = work.join("rootfs");
    let mut layout = Command::new("bash");
    layout.arg(&rootfs_script).arg(binary).arg(&rootfs);
    run(&mut layout)?;
    let mut strip = Command::new("strip");
    strip
        .arg("--strip-debug")
        .arg(rootfs.join("usr/local/bin").join(&name));
    run(&mut strip)?;
    let partial_archive = work.join("image.oci.tar");
    write_oci_archive(&rootfs, spec, &work, &partial_archive)?;
    fs::rename(&partial_archive, &archive).map_err(io_err("cannot move into place", &archive))?;
    fs::remove_dir_all(&work).map_err(io_err("cannot remove", &work))?;
    remove_older_archives(cache_dir, &name, &archive);
    Ok(archive)
}

/// Writes `rootfs` as a one-layer OCI image archive at `out`, using
/// `work_dir` for the layout.
pub fn write_oci_archive(
    rootfs: &Path,
    spec: &ImageSpec,
    work_dir: &Path,
    out: &Path,
) -> Result<(), ImageError> {
    let layout = work_dir.join("oci-layout-dir");
    recreate_dir(&layout)?;
    let blobs = layout.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io_err("cannot create", &blobs))?;

    // Owners are kept as they are (rootfs.sh gives /home/nonroot to 65532);
    // sorted names and a fixed mtime make the layer depend on content only.
    let layer_tmp = layout.join("layer.tar");
    let mut tar = Command::new("tar");
    tar.args([
        "--create",
        "--numeric-owner",
        "--sort=name",
        "--mtime=@0",
        "--file",
    ])
    .arg(&layer_tmp)
    .arg("-C")
    .arg(rootfs)
    .arg(".");
    run(&mut tar)?;
    let (layer_digest, layer_size) = digest_file(&layer_tmp)?;
    let layer_blob = blobs.join(&layer_digest);
    fs::rename(&layer_tmp, &layer_blob).map_err(io_err("cannot move", &layer_blob))?;

    let labels: serde_json::Map<String, serde_json::Value> = spec
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": spec.user,
            "Entrypoint": spec.entrypoint,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        "history": [{ "created_by": "drover-e2e node images", "created": "1970-01-01T00:00:00Z" }],
        "created": "1970-01-01T00:00:00Z",
    });
    let (config_digest, config_size) = write_blob(&blobs, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": { "mediaType": CONFIG_TYPE, "digest": format!("sha256:{config_digest}"), "size": config_size },
        "layers": [{ "mediaType": LAYER_TYPE, "digest": format!("sha256:{layer_digest}"), "size": layer_size }],
    });
    let (manifest_digest, manifest_size) = write_blob(&blobs, &manifest)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_size,
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": spec.reference,
                "org.opencontainers.image.ref.name": spec.tag(),
            },
        }],
    });
    write_json(&layout.join("index.json"), &index)?;
    write_json(
        &layout.join("oci-layout"),
        &json!({ "imageLayoutVersion": "1.0.0" }),
    )?;

    let mut archive = Command::new("tar");
    archive
        .args(["--create", "--file"])
        .arg(out)
        .arg("-C")
        .arg(&layout)
        .args(["oci-layout", "index.json", "blobs"]);
    run(&mut archive)?;
    fs::remove_dir_all(&layout).map_err(io_err("cannot remove", &layout))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ImageError> {
    let text = serde_json::to_vec(value).map_err(|e| io_err("cannot encode", path)(e.into()))?;
    fs::write(path, text).map_err(io_err("cannot write", path))
}

/// Writes `value` as a content-addressed blob; returns its digest (hex) and size.
fn write_blob(blobs: &Path, value: &serde_json::Value) -> Result<(String, usize), ImageError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| io_err("cannot encode a blob in", blobs)(e.into()))?;
    let digest = hex(&Sha256::digest(&bytes));
    let path = blobs.join(&digest);
    fs::write(&path, &bytes).map_err(io_err("cannot write", &path))?;
    Ok((digest, bytes.len()))
}

fn digest_file(path: &Path) -> Result<(String, u64), ImageError> {
    let mut file = File::open(path).map_err(io_err("cannot open", path))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(io_err("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((hex(&hasher.finalize()), size))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hash of what decides an image: the binary's identity (size and mtime,
/// cheaper than its 300 MB of content), rootfs.sh and the spec.
fn cache_key(binary: &Path, rootfs_script: &Path, spec: &ImageSpec) -> Result<String, ImageError> {
    let meta = fs::metadata(binary).map_err(io_err("cannot find the binary", binary))?;
    let script = fs::read(rootfs_script).map_err(io_err("cannot read", rootfs_script))?;
    let mut hasher = Sha256::new();
    hasher.update(binary.as_os_str().as_encoded_bytes());
    hasher.update(meta.len().to_le_bytes());
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    hasher.update(mtime.to_le_bytes());
    hasher.update(&script);
    hasher.update(format!("{spec:?}").as_bytes());
    Ok(hex(&hasher.finalize()[..10]))
}

/// Keeps only the newest archive of `name` (each is tens of MB).
fn remove_older_archives(cache_dir: &Path, name: &str, keep: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let file = entry.file_name();
        let file = file.to_string_lossy();
        if path != keep && file.starts_with(&format!("{name}-")) && file.ends_with(".oci.tar") {
            let _ = fs::remove_file(&path);
        }
    }
}

fn recreate_dir(dir: &Path) -> Result<(), ImageError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_err("cannot remove", dir))?;
    }
    fs::create_dir_all(dir).map_err(io_err("cannot create", dir))
}

/// Runs `command` to completion; its stderr goes into the error.
pub(crate) fn run(command: &mut Command) -> Result<(), ImageError> {
    let what = format!(
        "{} {}",
        command.get_program().to_string_lossy(),
        command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| ImageError::Io {
            context: "cannot run",
            path: PathBuf::from(command.get_program()),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ImageError::Command {
            command: what,
            status: crate::process::describe_status(output.status),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_the_last_part_of_the_reference() {
        let spec = ImageSpec {
            reference: "docker.io/library/drover-worker:0.1.0".into(),
            user: "65532:65532".into(),
            entrypoint: vec![],
            labels: vec![],
        };
        assert_eq!(spec.tag(), "0.1.0");
    }

    #[test]
    fn an_archive_is_an_oci_layout_with_one_layer() {
        let dir = std::env::temp_dir().join(format!("drover-e2e-oci-test-{}", std::process::id()));
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
        fs::write(rootfs.join("bin/hello"), "hello").expect("file");
        let spec = ImageSpec {
            reference: "drover.local/test:1".into(),
            user: "1:1".into(),
            entrypoint: vec!["/bin/hello".into()],
            labels: vec![("a".into(), "b".into())],
        };
        let out = dir.join("test.oci.tar");
        write_oci_archive(&rootfs, &spec, &dir, &out).expect("archive");
        let listing = Command::new("tar")
            .arg("-tf")
            .arg(&out)
            .output()
            .expect("tar -t");
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(listing.contains("index.json"), "{listing}");
        assert!(listing.contains("oci-layout"), "{listing}");
        // Layer, config and manifest.
        let blobs = listing
            .lines()
            .filter(|l| l.len() > "blobs/sha256/".len() && l.starts_with("blobs/sha256/"))
            .count();
        assert_eq!(blobs, 3, "{listing}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
