//! A safe wrapper over MLX's own distributed backend (`mlx::core::distributed`
//! through mlx-c): joining a group from the environment, its rank and size,
//! and `all_sum` of arrays. The transport is MLX's (the ring backend over
//! TCP, or MPI); nothing here sends bytes itself.
//!
//! The ring backend is configured by two environment variables: `MLX_RANK`
//! (this process's rank) and `MLX_HOSTFILE`, a JSON file listing one entry
//! per rank, each a list of `"host:port"` addresses, e.g.
//! `[["10.0.0.1:5000"], ["10.0.0.2:5000"]]`. [`Hostfile`] reads and checks it
//! before MLX does, so a mistake is reported with the file and the entry.

use crate::ffi::mlx::DistributedGroup;
use crate::{Error, Result};
use mlx_rs::Array;
use std::path::{Path, PathBuf};

/// Which MLX distributed backend to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// TCP ring between the hosts of `MLX_HOSTFILE` (Ethernet, Thunderbolt, loopback).
    Ring,
    /// MPI (started by `mpirun`).
    Mpi,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::Mpi => "mpi",
        }
    }

    /// Whether this MLX build ships the backend.
    pub fn is_available(self) -> bool {
        DistributedGroup::backend_available(self.name())
    }
}

/// A ring hostfile: the addresses of every rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hostfile {
    /// Where it was read from.
    pub path: PathBuf,
    /// One entry per rank: its `host:port` addresses.
    pub ranks: Vec<Vec<String>>,
}

impl Hostfile {
    /// Reads and checks a hostfile: a non-empty JSON array with one
    /// non-empty array of `"host:port"` strings per rank.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|error| {
            invalid(format!(
                "not JSON ({error}); expected e.g. [[\"10.0.0.1:5000\"], [\"10.0.0.2:5000\"]]"
            ))
        })?;
        let entries = value
            .as_array()
            .filter(|entries| !entries.is_empty())
            .ok_or_else(|| invalid("expected a non-empty array with one entry per rank".into()))?;
        let mut ranks = Vec::with_capacity(entries.len());
        for (rank, entry) in entries.iter().enumerate() {
            let addresses = entry
                .as_array()
                .filter(|list| !list.is_empty())
                .ok_or_else(|| {
                    invalid(format!(
                        "rank {rank}: expected a non-empty array of \"host:port\" strings, got {entry}"
                    ))
                })?;
            let mut parsed = Vec::with_capacity(addresses.len());
            for address in addresses {
                let text = address
                    .as_str()
                    .filter(|text| {
                        text.rsplit_once(':').is_some_and(|(host, port)| {
                            !host.is_empty() && port.parse::<u16>().is_ok()
                        })
                    })
                    .ok_or_else(|| {
                        invalid(format!(
                            "rank {rank}: expected \"host:port\" with a port number, got {address}"
                        ))
                    })?;
                parsed.push(text.to_string());
            }
            ranks.push(parsed);
        }
        Ok(Self {
            path: path.to_path_buf(),
            ranks,
        })
    }

    /// Writes a hostfile for processes on this machine, one per port (for
    /// tests and local launches).
    pub fn loopback(path: &Path, ports: &[u16]) -> Result<Self> {
        let entries: Vec<Vec<String>> = ports
            .iter()
            .map(|port| vec![format!("127.0.0.1:{port}")])
            .collect();
        let text = serde_json::to_string(&entries).map_err(|error| Error::Config {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        std::fs::write(path, text).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            ranks: entries,
        })
    }

    /// `count` TCP ports on 127.0.0.1 that were free a moment ago.
    pub fn free_loopback_ports(count: usize) -> Result<Vec<u16>> {
        // Hold every listener until all are chosen so no port repeats.
        let listeners = (0..count)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|error| Error::Distributed(format!("no free loopback port: {error}")))?;
        listeners
            .iter()
            .map(|listener| {
                listener
                    .local_addr()
                    .map(|address| address.port())
                    .map_err(|error| Error::Distributed(format!("no free loopback port: {error}")))
            })
            .collect()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.ranks.len()
    }
}

/// A group of processes that reduce arrays together.
pub struct Group {
    /// None for a group of one process (nothing to exchange).
    raw: Option<DistributedGroup>,
    rank: usize,
    size: usize,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group(rank {} of {})", self.rank, self.size)
    }
}

impl Group {
    /// Joins the group described by the environment (`MLX_RANK` and
    /// `MLX_HOSTFILE` for the ring backend). Connecting waits until every
    /// neighbour is up; an unset or inconsistent environment is an error.
    pub fn init(backend: Backend) -> Result<Self> {
        if !backend.is_available() {
            return Err(Error::Distributed(format!(
                "this MLX build has no `{}` distributed backend",
                backend.name()
            )));
        }
        if backend == Backend::Ring {
            check_ring_environment()?;
        }
        // mlx-rs installs its error handler (which records instead of exiting) on first use.
        mlx_rs::ops::zeros::<f32>(&[1])?.eval()?;
        let raw = DistributedGroup::init(backend.name()).ok_or_else(|| {
            Error::Distributed(format!(
                "MLX could not start the `{}` backend (are all ranks started with the same \
                 hostfile, and are the addresses reachable?)",
                backend.name()
            ))
        })?;
        Ok(Self::from_raw(raw))
    }

    /// A group of one process: what a run that is not distributed uses
    /// (MLX's distributed layer is not touched).
    pub fn single() -> Self {
        Self {
            raw: None,
            rank: 0,
            size: 1,
        }
    }

    fn from_raw(raw: DistributedGroup) -> Self {
        let (rank, size) = raw.rank_and_size();
        Self {
            raw: Some(raw),
            rank: rank.max(0) as usize,
            size: size.max(1) as usize,
        }
    }

    /// This process's rank (0-based).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The element-wise sum of `x` over all ranks (lazy, like any MLX op;
    /// the exchange happens when the result is evaluated). Runs on the CPU
    /// stream, which every backend supports.
    pub fn all_sum(&self, x: &Array) -> Result<Array> {
        let Some(raw) = self.raw.as_ref().filter(|_| self.size > 1) else {
            return Ok(x.clone());
        };
        raw.all_sum(x).ok_or_else(|| {
            Error::Distributed(format!(
                "all_sum of an array of shape {:?} failed",
                x.shape()
            ))
        })
    }

    /// Sums each array over all ranks with one exchange: the arrays are
    /// flattened into one buffer, reduced, and cut back into their shapes.
    pub fn all_sum_flat(&self, arrays: &[Array]) -> Result<Vec<Array>> {
        if self.size == 1 || arrays.is_empty() {
            return Ok(arrays.to_vec());
        }
        let flat: Vec<Array> = arrays
            .iter()
            .map(|a| a.reshape(&[-1]))
            .collect::<std::result::Result<_, _>>()?;
        let joined = mlx_rs::ops::concatenate(&flat, 0)?;
        let summed = self.all_sum(&joined)?;
        let mut boundaries = Vec::with_capacity(arrays.len());
        let mut offset = 0i32;
        for array in &arrays[..arrays.len() - 1] {
            offset += array.size() as i32;
            boundaries.push(offset);
        }
        let pieces = summed.split_at_indices(&boundaries, 0)?;
        let out = pieces
            .iter()
            .zip(arrays)
            .map(|(piece, array)| piece.reshape(array.shape()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(out)
    }
}

/// The ring backend's environment, checked before MLX reads it.
fn check_ring_environment() -> Result<()> {
    let hostfile = std::env::var_os("MLX_HOSTFILE").ok_or_else(|| {
        Error::Distributed("MLX_HOSTFILE is not set (the ring backend needs a hostfile)".into())
    })?;
    let hostfile = Hostfile::read(Path::new(&hostfile))?;
    let rank =
        std::env::var("MLX_RANK").map_err(|_| Error::Distributed("MLX_RANK is not set".into()))?;
    let rank: usize = rank
        .trim()
        .parse()
        .map_err(|_| Error::Distributed(format!("MLX_RANK={rank:?} is not a rank number")))?;
    if rank >= hostfile.size() {
        return Err(Error::Distributed(format!(
            "MLX_RANK={rank} but {} lists {} ranks (0..{})",
            hostfile.path.display(),
            hostfile.size(),
            hostfile.size() - 1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfile_errors_name_the_entry() {
        let dir = tempfile::tempdir().expect("loopback test");
        let path = dir.path().join("hosts.json");
        for (text, expected) in [
            ("{}", "non-empty array"),
            ("[]", "non-empty array"),
            ("[[\"127.0.0.1:5000\"], []]", "rank 1"),
            ("[[\"127.0.0.1\"]]", "host:port"),
            ("[[\"127.0.0.1:99999\"]]", "host:port"),
            ("not json", "not JSON"),
        ] {
            std::fs::write(&path, text).expect("loopback test");
            let error = Hostfile::read(&path).expect_err("must fail").to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(error.contains("hosts.json"), "{error}");
        }
        let written = Hostfile::loopback(&path, &[40100, 40101, 40102]).expect("loopback test");
        assert_eq!(Hostfile::read(&path).expect("loopback test"), written);
        assert_eq!(written.ranks[2], vec!["127.0.0.1:40102".to_string()]);
    }

    #[test]
    fn a_single_group_sums_to_itself() {
        let group = Group::single();
        assert_eq!((group.rank(), group.size()), (0, 1));
        let x = Array::from_slice(&[1.0f32, 2.0], &[2]);
        let sums = group
            .all_sum_flat(std::slice::from_ref(&x))
            .expect("loopback test");
        assert_eq!(sums[0].as_slice::<f32>(), &[1.0, 2.0]);
    }
}
