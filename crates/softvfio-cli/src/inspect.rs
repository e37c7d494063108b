//! `softvfio inspect`: the state of a running `softvfio run` session.
//!
//! A session serves a JSON snapshot on a Unix socket (default
//! `/tmp/softvfio-<supervisor pid>.sock`): one connection, one snapshot,
//! then the server closes it. `softvfio inspect` connects (to the only
//! session, or the one named with `--pid`/`--socket`) and prints it readably
//! or, with `--json`, as is. A socket was chosen over a signal-triggered dump
//! because the supervisor owns the program's signals and because a client
//! wants the answer, not a file somewhere.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use clap::Args;
use serde::Serialize;
use softvfio::container::{Container, ContainerSnapshot};
use softvfio::iommufd::Iommufd;
use softvfio::sanitizer::Sanitizer;
pub use softvfio_platform::report::{fault_views, FaultView};
use softvfio_platform::sanitize::{self, SanitizerReport};
use softvfio_platform::BuiltPlatform;

use crate::report;

#[derive(Args)]
pub struct InspectArgs {
    /// Supervisor pid of the `softvfio run` session.
    #[arg(long)]
    pid: Option<u32>,
    /// Socket of the session.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print the snapshot as JSON.
    #[arg(long)]
    json: bool,
    /// Show a sanitizer report written by `softvfio run --sanitize
    /// --report-json FILE` instead of a live session.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

pub fn default_socket(pid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/softvfio-{pid}.sock"))
}

/// The containers of a session, for snapshots.
pub struct Registry {
    pub built: Arc<BuiltPlatform>,
    containers: Mutex<Vec<Weak<Container>>>,
    iommufds: Mutex<Vec<Weak<Iommufd>>>,
    sanitizer: Mutex<Option<Arc<Sanitizer>>>,
}

/// A session's state, as `inspect` shows it.
#[derive(Serialize, serde::Deserialize, Clone, Debug)]
pub struct SessionSnapshot {
    pub supervisor_pid: u32,
    pub containers: Vec<serde_json::Value>,
    pub faults: Vec<FaultView>,
    pub faults_overflowed: u64,
    pub iotlb: serde_json::Value,
    pub devices: Vec<serde_json::Value>,
    /// Open `/dev/iommu` files: IOASes with their areas, HWPTs, devices.
    #[serde(default)]
    pub iommufds: Vec<serde_json::Value>,
    /// What the DMA sanitizer found so far (`--sanitize`).
    #[serde(default)]
    pub sanitizer: Option<SanitizerReport>,
}

impl Registry {
    pub fn new(built: Arc<BuiltPlatform>) -> Self {
        Self {
            built,
            containers: Mutex::new(Vec::new()),
            iommufds: Mutex::new(Vec::new()),
            sanitizer: Mutex::new(None),
        }
    }

    pub fn add_iommufd(&self, c: &Arc<Iommufd>) {
        let mut v = self.iommufds.lock().unwrap_or_else(|p| p.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(c));
    }

    /// The session's DMA sanitizer, whose findings snapshots include.
    pub fn set_sanitizer(&self, s: Option<Arc<Sanitizer>>) {
        *self.sanitizer.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub fn add_container(&self, c: &Arc<Container>) {
        let mut v = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(c));
    }

    pub fn container_snapshots(&self) -> Vec<ContainerSnapshot> {
        let v = self.containers.lock().unwrap_or_else(|p| p.into_inner());
        v.iter()
            .filter_map(|w| w.upgrade())
            .map(|c| c.snapshot())
            .collect()
    }

    pub fn snapshot(&self) -> SessionSnapshot {
        let iommu = &self.built.iommu;
        SessionSnapshot {
            supervisor_pid: std::process::id(),
            containers: self
                .container_snapshots()
                .iter()
                .filter_map(|s| serde_json::to_value(s).ok())
                .collect(),
            faults: fault_views(&self.built),
            faults_overflowed: iommu.fault_overflow(),
            iotlb: {
                let t = iommu.iotlb_stats();
                serde_json::json!({
                    "capacity": t.capacity,
                    "valid": t.valid,
                    "fills": t.fills,
                    "evictions": t.evictions,
                    "invalidated": t.invalidated,
                })
            },
            iommufds: self
                .iommufds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter_map(|w| w.upgrade())
                .filter_map(|c| serde_json::to_value(c.snapshot()).ok())
                .collect(),
            devices: self.built.devices.iter().map(|d| d.snapshot()).collect(),
            sanitizer: self
                .sanitizer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|s| sanitize::build_report(&self.built, s, &[])),
        }
    }
}

/// Starts the snapshot server on `path` (a background thread).
pub fn serve(path: &Path, registry: Arc<Registry>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new()
        .name("softvfio-inspect".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let snap = registry.snapshot();
                if let Ok(json) = serde_json::to_vec(&snap) {
                    let _ = s.write_all(&json);
                }
            }
        })?;
    Ok(())
}

fn find_socket(args: &InspectArgs) -> Result<PathBuf, String> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    if let Some(pid) = args.pid {
        return Ok(default_socket(pid));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/tmp")
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("softvfio-") && n.ends_with(".sock"))
        })
        .filter(|p| UnixStream::connect(p).is_ok())
        .collect();
    match found.len() {
        0 => Err("no running `softvfio run` session found (use --pid or --socket)".into()),
        1 => Ok(found.remove(0)),
        _ => Err(format!(
            "several sessions are running ({}); choose one with --pid or --socket",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Fetches a snapshot from a session socket.
pub fn fetch(path: &Path) -> Result<SessionSnapshot, String> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    serde_json::from_slice(&buf).map_err(|e| format!("bad snapshot: {e}"))
}

pub fn main(args: InspectArgs) -> u8 {
    if let Some(file) = &args.report {
        let report: SanitizerReport = match std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("softvfio inspect: {}: {e}", file.display());
                return 1;
            }
        };
        let mut out = std::io::stdout().lock();
        return u8::from(sanitize::write_report(&mut out, &report).is_err());
    }
    let path = match find_socket(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("softvfio inspect: {e}");
            return 1;
        }
    };
    let snap = match fetch(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("softvfio inspect: {e}");
            return 1;
        }
    };
    let mut out = std::io::stdout().lock();
    let res = if args.json {
        serde_json::to_writer_pretty(&mut out, &snap)
            .map_err(std::io::Error::other)
            .and_then(|()| writeln!(out))
    } else {
        report::write_session(&mut out, &snap)
    };
    if res.is_err() {
        return 1;
    }
    0
}
