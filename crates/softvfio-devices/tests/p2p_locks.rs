//! Peer-to-peer DMA between device models that run their DMA inside the
//! register write that starts it, holding their own lock
//! (`softvfio::p2p`, docs/MMIO.md "Peer to peer"): a device DMA-ing into
//! its own BAR, and two devices DMA-ing into each other's BARs at the same
//! time, never deadlock; writes always land (posted), reads complete or
//! fail as a completer abort / completion timeout (a DMA fault of the
//! requester), never with a wrong value.

use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use softvfio::device::VfioDeviceModel;
use softvfio::p2p::{peer_read, peer_write, PeerTarget};
use softvfio_devices::{DmaAccess, DmaError, DmaTarget, EduDevice, EduOptions, VecDmaTarget};

/// Bus addresses: memory at 0, device `i`'s BAR0 at `(i + 1) << 24`.
const MEM_LEN: usize = 0x1_0000;
const BAR_LEN: u64 = 1 << 20;

/// What sits between the devices and memory: memory, and the peers' BARs.
struct Fabric {
    mem: VecDmaTarget,
    peers: std::sync::OnceLock<Vec<Weak<dyn VfioDeviceModel>>>,
    /// When set, a peer read first waits here (so that two devices are
    /// both inside their DMA, each holding its lock, before either reads
    /// the other).
    meet: std::sync::Mutex<Option<Arc<std::sync::Barrier>>>,
}

impl Fabric {
    fn peer(&self, addr: u64) -> Option<(PeerTarget, u64)> {
        let i = (addr >> 24).checked_sub(1)? as usize;
        let model = self.peers.get()?.get(i)?.clone();
        let skip = addr & ((1 << 24) - 1);
        (skip < BAR_LEN).then_some((
            PeerTarget {
                model,
                region: 0,
                offset: 0,
            },
            skip,
        ))
    }
}

impl DmaTarget for Fabric {
    fn dma_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        match self.peer(addr) {
            Some((t, skip)) => {
                let meet = self.meet.lock().unwrap().clone();
                if let Some(b) = meet {
                    b.wait();
                }
                peer_read(&t, skip, buf)
            }
            .map_err(|e| DmaError::fault(addr, DmaAccess::Read, 0, e.to_string())),
            None => self.mem.dma_read(addr, buf),
        }
    }

    fn dma_write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        match self.peer(addr) {
            Some((t, skip)) => peer_write(&t, skip, data)
                .map_err(|e| DmaError::fault(addr, DmaAccess::Write, 0, e.to_string())),
            None => self.mem.dma_write(addr, data),
        }
    }
}

fn bar(i: usize) -> u64 {
    (i as u64 + 1) << 24
}

fn w(d: &EduDevice, off: u64, v: u64) {
    let n = if off >= 0x80 { 8 } else { 4 };
    assert_eq!(d.region_write(0, off, &v.to_le_bytes()[..n]), Ok(n));
}

fn r32(d: &EduDevice, off: u64) -> u32 {
    let mut b = [0u8; 4];
    assert_eq!(d.region_read(0, off, &mut b), Ok(4));
    u32::from_le_bytes(b)
}

/// One DMA: `to_ram` from the buffer (0x40000) to `addr`, else from
/// `addr` into the buffer.
fn dma(d: &EduDevice, addr: u64, cnt: u64, to_ram: bool) {
    let (src, dst) = if to_ram {
        (0x40000, addr)
    } else {
        (addr, 0x40000)
    };
    w(d, 0x80, src);
    w(d, 0x88, dst);
    w(d, 0x90, cnt);
    w(d, 0x98, 1 | if to_ram { 2 } else { 0 });
}

/// `n` edus on one fabric, memory decoding and bus mastering on.
fn devices(n: usize) -> (Vec<Arc<EduDevice>>, Arc<Fabric>) {
    let fabric = Arc::new(Fabric {
        mem: VecDmaTarget::new(0, MEM_LEN),
        peers: std::sync::OnceLock::new(),
        meet: std::sync::Mutex::new(None),
    });
    let devs: Vec<Arc<EduDevice>> = (0..n)
        .map(|i| {
            let d = Arc::new(EduDevice::with_options(EduOptions::new(format!(
                "0000:00:0{}.0",
                i + 3
            ))));
            d.set_dma_target(fabric.clone());
            assert_eq!(d.region_write(7, 4, &6u16.to_le_bytes()), Ok(2));
            d
        })
        .collect();
    let weak = devs
        .iter()
        .map(|d| {
            let m: Arc<dyn VfioDeviceModel> = d.clone();
            Arc::downgrade(&m)
        })
        .collect();
    assert!(fabric.peers.set(weak).is_ok());
    (devs, fabric)
}

/// A device DMA-ing into its own BAR: the write lands once the device is
/// free (posted), before the register write that started the DMA returns;
/// the read is a completer abort (a DMA fault), the buffer zero-filled.
#[test]
fn a_device_dma_into_its_own_bar() {
    let (devs, fabric) = devices(1);
    let a = &devs[0];
    assert!(fabric.mem.write_bytes(0x100, &0x1234_5678u32.to_le_bytes()));
    dma(a, 0x100, 4, false);
    dma(a, bar(0) + 4, 4, true);
    assert_eq!(r32(a, 4), !0x1234_5678);
    assert_eq!(a.stats().dma_faults, 0);
    dma(a, bar(0), 4, false);
    assert_eq!(a.stats().dma_faults, 1);
    assert_eq!(a.dma_buffer()[..4], [0, 0, 0, 0]);
    // Another device reads it fine.
    let (devs, _f) = devices(2);
    dma(&devs[1], bar(0), 4, false);
    assert_eq!(devs[1].dma_buffer()[..4], 0x0100_00edu32.to_le_bytes());
}

/// Two devices DMA-ing into each other's BARs from two threads at once,
/// writes and reads, many times: no deadlock (the test fails after 60 s
/// instead of hanging), every write lands, every read gives the peer's
/// identification register or is a DMA fault (completion timeout).
#[test]
fn two_devices_dma_into_each_other_at_once() {
    let (devs, fabric) = devices(2);
    const ROUNDS: u32 = 2000;
    let (tx, rx) = mpsc::channel();
    for me in 0..2usize {
        let devs = devs.clone();
        let fabric = fabric.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let (d, peer) = (&devs[me], 1 - me);
            let slot = 0x1000 * (me as u64 + 1);
            let mut wrong = 0u32;
            let mut read_faults = 0u64;
            for round in 0..ROUNDS {
                let value = (me as u32) << 28 | round;
                assert!(fabric.mem.write_bytes(slot, &value.to_le_bytes()));
                let faults = d.stats().dma_faults;
                dma(d, slot, 4, false);
                dma(d, bar(peer) + 4, 4, true);
                assert_eq!(d.stats().dma_faults, faults, "a write failed");
                dma(d, bar(peer), 4, false);
                if d.stats().dma_faults > faults {
                    read_faults += 1;
                } else if d.dma_buffer()[..4] != 0x0100_00edu32.to_le_bytes() {
                    wrong += 1;
                }
            }
            let _ = tx.send((me, wrong, read_faults));
        });
    }
    drop(tx);
    let mut done = Vec::new();
    for _ in 0..2 {
        let r = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the two devices deadlocked");
        done.push(r);
    }
    for (me, wrong, read_faults) in done {
        assert_eq!(wrong, 0, "device {me}: a read gave a wrong value");
        eprintln!("device {me}: {read_faults} of {ROUNDS} peer reads timed out");
    }
    // Each device's liveness holds the complement of the last value its
    // peer wrote.
    for (me, d) in devs.iter().enumerate() {
        let last = ((1 - me) as u32) << 28 | (ROUNDS - 1);
        assert_eq!(r32(d, 4), !last, "device {me}");
    }
}

/// Two devices reading each other's registers while each holds its own
/// lock (a wait cycle): nobody waits for ever. The first read to pass
/// `COMPLETION_TIMEOUT` fails (a DMA fault of its device), which frees
/// its device, so the other read completes with the right value (or
/// times out too, if both gave up at the same moment); afterwards both
/// devices work.
#[test]
fn a_read_cycle_ends_in_a_completion_timeout() {
    let (devs, fabric) = devices(2);
    *fabric.meet.lock().unwrap() = Some(Arc::new(std::sync::Barrier::new(2)));
    let (tx, rx) = mpsc::channel();
    let start = std::time::Instant::now();
    for me in 0..2usize {
        let devs = devs.clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let d = &devs[me];
            dma(d, bar(1 - me), 4, false);
            let _ = tx.send((me, d.stats().dma_faults, d.dma_buffer()[..4].to_vec()));
        });
    }
    drop(tx);
    let mut faults = 0;
    for _ in 0..2 {
        let (me, f, buf) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the two devices deadlocked");
        match f {
            0 => assert_eq!(buf, 0x0100_00edu32.to_le_bytes(), "device {me}"),
            1 => assert_eq!(buf, [0; 4], "device {me}"),
            _ => panic!("device {me}: {f} faults"),
        }
        faults += f;
    }
    assert!(faults >= 1);
    assert!(start.elapsed() >= softvfio::p2p::COMPLETION_TIMEOUT);
    *fabric.meet.lock().unwrap() = None;
    // Both free again: a read of the peer works.
    dma(&devs[0], bar(1), 4, false);
    dma(&devs[1], bar(0), 4, false);
    let after: u64 = devs.iter().map(|d| d.stats().dma_faults).sum();
    assert_eq!(after, faults);
    for d in &devs {
        assert_eq!(d.dma_buffer()[..4], 0x0100_00edu32.to_le_bytes());
    }
}
