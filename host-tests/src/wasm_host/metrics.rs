//! Metrics with Envoy's semantics.
//!
//! Envoy (`source/extensions/common/wasm/context.cc`, `defineMetric` and
//! friends) hands out per-VM metric ids whose two low bits encode the kind
//! (counter 0, gauge 1, histogram 2; ids step by 4), and backs them with
//! stats looked up by name, so two workers defining the same name share one
//! value. Counters only grow: `increment` with an offset ≤ 0 is
//! `BadArgument`, `record` adds. Gauges take signed increments and `record`
//! sets them. Histograms only `record`; `get`/`increment` on them are
//! `BadArgument`. An unknown id is `NotFound`.

use super::abi::{MetricType, Status};
use std::collections::{BTreeMap, HashMap};

/// The host-wide value of one named metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricValue {
    pub kind: MetricType,
    /// Counter or gauge value.
    pub value: u64,
    /// Every value recorded into a histogram.
    pub samples: Vec<u64>,
}

/// Host-wide metrics, by name.
#[derive(Debug, Default)]
pub struct Metrics {
    by_name: BTreeMap<String, MetricValue>,
}

impl Metrics {
    pub fn get(&self, name: &str) -> Option<&MetricValue> {
        self.by_name.get(name)
    }

    pub fn all(&self) -> &BTreeMap<String, MetricValue> {
        &self.by_name
    }

    fn ensure(&mut self, name: &str, kind: MetricType) {
        self.by_name.entry(name.to_string()).or_insert(MetricValue {
            kind,
            value: 0,
            samples: Vec::new(),
        });
    }
}

const KIND_MASK: u32 = 0x3;
const ID_STEP: u32 = 0x4;

/// One VM's id → name table.
#[derive(Debug, Default)]
pub struct MetricIds {
    ids: HashMap<u32, (MetricType, String)>,
    next: [u32; 3],
}

impl MetricIds {
    pub fn define(&mut self, metrics: &mut Metrics, kind: MetricType, name: &str) -> u32 {
        let slot = kind as usize;
        // Envoy starts each kind's sequence at its tag and skips id 0.
        if self.next[slot] == 0 {
            self.next[slot] = ID_STEP + kind as u32;
        }
        let id = self.next[slot];
        self.next[slot] += ID_STEP;
        metrics.ensure(name, kind);
        self.ids.insert(id, (kind, name.to_string()));
        id
    }

    fn lookup(&self, id: u32) -> Result<(MetricType, &str), Status> {
        let kind = MetricType::from_code((id & KIND_MASK) as i32).ok_or(Status::BadArgument)?;
        match self.ids.get(&id) {
            Some((k, name)) if *k == kind => Ok((kind, name.as_str())),
            _ => Err(Status::NotFound),
        }
    }

    pub fn increment(&self, metrics: &mut Metrics, id: u32, offset: i64) -> Result<(), Status> {
        let (kind, name) = self.lookup(id)?;
        let m = metrics.by_name.get_mut(name).ok_or(Status::NotFound)?;
        match kind {
            MetricType::Counter => {
                if offset <= 0 {
                    return Err(Status::BadArgument);
                }
                m.value = m.value.wrapping_add(offset as u64);
            }
            MetricType::Gauge => {
                m.value = if offset >= 0 {
                    m.value.wrapping_add(offset as u64)
                } else {
                    m.value.wrapping_sub(offset.unsigned_abs())
                };
            }
            MetricType::Histogram => return Err(Status::BadArgument),
        }
        Ok(())
    }

    pub fn record(&self, metrics: &mut Metrics, id: u32, value: u64) -> Result<(), Status> {
        let (kind, name) = self.lookup(id)?;
        let m = metrics.by_name.get_mut(name).ok_or(Status::NotFound)?;
        match kind {
            MetricType::Counter => m.value = m.value.wrapping_add(value),
            MetricType::Gauge => m.value = value,
            MetricType::Histogram => m.samples.push(value),
        }
        Ok(())
    }

    pub fn get(&self, metrics: &Metrics, id: u32) -> Result<u64, Status> {
        let (kind, name) = self.lookup(id)?;
        if kind == MetricType::Histogram {
            return Err(Status::BadArgument);
        }
        metrics
            .by_name
            .get(name)
            .map(|m| m.value)
            .ok_or(Status::NotFound)
    }
}
