//! Leak check end to end: a static C program opens and closes containers,
//! groups and devices thousands of times under `softvfio run` (mapping
//! memory, running edu DMA, and closing in varying orders, sometimes with
//! mappings still in place), and checks inside itself that no descriptor is
//! left open and that VmLck returns to its start; the run's report must say
//! "no leak". Alone in its test binary: it counts this process's
//! descriptors too.

use std::path::{Path, PathBuf};

const CHURN: &str = r#"
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static int fd_count(void) {
  int n = 0; DIR *d = opendir("/proc/self/fd"); struct dirent *e;
  if (!d) return -1;
  while ((e = readdir(d))) if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the directory's own descriptor */
}

/* VmLck as softvfio shows it (type1 accounting), in kB. */
static long vmlck(void) {
  char path[64], line[256]; long kb = -1;
  snprintf(path, sizeof path, "/proc/%d/status", getpid());
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  while (fgets(line, sizeof line, f)) if (!strncmp(line, "VmLck:", 6)) kb = atol(line + 6);
  fclose(f);
  return kb;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1000, bad = 0;
  const size_t len = 64 * 4096;
  char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  memset(buf, 1, len);
  int fds_before = fd_count();
  long lck_before = vmlck(), lck_mapped = -1;
  for (int i = 0; i < n; i++) {
    int c = open("/dev/vfio/vfio", O_RDWR), g = open("/dev/vfio/3", O_RDWR);
    if (c < 0 || g < 0) { bad++; fprintf(stderr, "open %d: %s\n", i, strerror(errno)); break; }
    if (ioctl(g, VFIO_GROUP_SET_CONTAINER, &c) || ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) { bad++; break; }
    int dev = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:03.0");
    if (dev < 0) { bad++; break; }
    size_t sz = (size_t)(1 + i % 64) * 4096;
    struct vfio_iommu_type1_dma_map m = { .argsz = sizeof m, .flags = 3,
      .vaddr = (uint64_t)(uintptr_t)buf, .iova = 0x100000, .size = sz };
    if (ioctl(c, VFIO_IOMMU_MAP_DMA, &m)) { bad++; fprintf(stderr, "map %d: %s\n", i, strerror(errno)); }
    if (i == 0) lck_mapped = vmlck();
    if (i % 7 == 0) {
      /* A second device fd of the same device, and bad requests. */
      int dev2 = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:03.0");
      if (dev2 >= 0) close(dev2); else bad++;
      if (ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "0000:00:09.0") >= 0) bad++;
      if (open("/dev/vfio/3", O_RDWR) >= 0) bad++; /* EBUSY */
    }
    if (i % 2 == 0) {
      struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof u, .iova = 0x100000, .size = sz };
      if (ioctl(c, VFIO_IOMMU_UNMAP_DMA, &u) || u.size != sz) bad++;
    }
    /* Close in varying orders; odd iterations close with the mapping in place. */
    switch (i % 3) {
    case 0: close(dev); close(g); close(c); break;
    case 1: close(c); close(dev); close(g); break;
    default: close(g); close(c); close(dev); break;
    }
  }
  int fds_after = fd_count();
  long lck_after = vmlck();
  printf("iterations %d\nbad %d\nfds_before %d\nfds_after %d\n", n, bad, fds_before, fds_after);
  printf("vmlck_before %ld\nvmlck_mapped %ld\nvmlck_after %ld\n", lck_before, lck_mapped, lck_after);
  return bad != 0;
}
"#;

fn build(dir: &Path) -> Option<PathBuf> {
    if std::process::Command::new("gcc")
        .arg("--version")
        .output()
        .is_err()
    {
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let src = dir.join("churn.c");
    let bin = dir.join("churn");
    std::fs::write(&src, CHURN).unwrap();
    let cc = std::process::Command::new("gcc")
        .args(["-O2", "-static", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    Some(bin)
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn thousands_of_open_close_cycles_under_softvfio_run_leak_nothing() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("leak-{}", std::process::id()));
    let Some(bin) = build(&dir) else {
        eprintln!("skipped: no gcc");
        return;
    };
    let fds_before = fd_count();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_softvfio"))
        .args(["run", "--"])
        .arg(&bin)
        .arg("3000")
        .output()
        .unwrap();
    let fds_after = fd_count();
    let _ = std::fs::remove_dir_all(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let ctx = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(out.status.success(), "{ctx}");
    let kv: std::collections::HashMap<&str, &str> =
        stdout.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(kv.get("iterations"), Some(&"3000"), "{ctx}");
    assert_eq!(kv.get("bad"), Some(&"0"), "{ctx}");
    assert_eq!(
        kv["fds_before"], kv["fds_after"],
        "descriptors leaked in the program: {ctx}"
    );
    assert_eq!(
        kv["vmlck_before"], kv["vmlck_after"],
        "VmLck did not return: {ctx}"
    );
    // One 4 KiB page was mapped in the first iteration: VmLck showed it.
    let before: i64 = kv["vmlck_before"].parse().unwrap();
    let mapped: i64 = kv["vmlck_mapped"].parse().unwrap();
    assert_eq!(mapped - before, 4, "VmLck while mapped: {ctx}");
    assert!(
        stderr.contains("after release: 0 pinned pages, 0 accounted pages: no leak"),
        "{ctx}"
    );
    assert_eq!(
        fds_before, fds_after,
        "descriptors leaked in the test process"
    );
}
