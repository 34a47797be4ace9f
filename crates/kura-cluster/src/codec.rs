//! How kura's parts of a physical plan travel to the scheduler and the executors.
//!
//! Two things in a kura plan have no standard encoding: scans of a stored dataset, whose
//! Parquet reader carries the files' keys (DataFusion's encoding drops them), and the
//! threshold's capped distinct-units count ([`kura_engine::units`]). Before a plan leaves the
//! coordinator, a [`KeysExec`] is put above each stored scan; the scan stays a plain Parquet
//! scan in DataFusion's encoding, and this codec encodes the `KeysExec` as the scan's
//! [`Access`]: the store's origin and the files' keys. These bytes travel only inside the
//! cluster's mutual TLS to attested nodes. Decoding opens the store and gives the scan below
//! its reader of that store and its keys again.

use std::sync::Arc;

use ballista_core::serde::BallistaPhysicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use kura_engine::datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use kura_engine::datafusion::datasource::physical_plan::FileScanConfig;
use kura_engine::datafusion::datasource::source::DataSourceExec;
use kura_engine::datafusion::error::{DataFusionError, Result};
use kura_engine::datafusion::execution::TaskContext;
use kura_engine::datafusion::execution::object_store::{
    DefaultObjectStoreRegistry, ObjectStoreRegistry,
};
use kura_engine::datafusion::logical_expr::AggregateUDF;
use kura_engine::datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use kura_engine::stored::{Access, Scans};
use object_store::ObjectStore;

/// Opens a store from the origin a stored dataset records (the service's description).
pub type OpenStore = Arc<dyn Fn(&str) -> Result<Arc<dyn ObjectStore>> + Send + Sync>;

/// The keys of the stored scan below it (its only child), which DataFusion's encoding of the
/// scan drops. It passes its child's rows through. Keeping the scan itself a plain Parquet
/// `DataSourceExec` lets Ballista give each task exactly its share of the files; a scan hidden
/// inside a node of kura's own would be read whole by every task.
pub struct KeysExec {
    scan: Arc<dyn ExecutionPlan>,
    access: Access,
}

impl std::fmt::Debug for KeysExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeysExec").finish_non_exhaustive()
    }
}

impl DisplayAs for KeysExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        // Never the keys or the origin (which may hold a provider's credentials).
        write!(f, "KeysExec")
    }
}

impl ExecutionPlan for KeysExec {
    fn name(&self) -> &str {
        "KeysExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.scan.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.scan]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(scan), true) => Ok(Arc::new(KeysExec {
                scan,
                access: self.access.clone(),
            })),
            _ => Err(DataFusionError::Internal("KeysExec has one child".into())),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.scan.execute(partition, context)
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn kura_engine::datafusion::physical_plan::PhysicalExpr>,
        ) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
}

/// `plan` with [`KeysExec`] above each scan of a stored dataset, with its [`Access`] from
/// `scans`. A stored scan without one (a dataset only this process can read) is refused.
pub fn wrap_scans(plan: Arc<dyn ExecutionPlan>, scans: &Scans) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(config) = exec.data_source().downcast_ref::<FileScanConfig>() else {
            return Ok(Transformed::no(node));
        };
        let access = scans
            .0
            .get(config.object_store_url.as_str())
            .ok_or_else(|| {
                DataFusionError::Execution(
                    "a dataset of this run can be read only by the coordinator".into(),
                )
            })?
            .clone();
        Ok(Transformed::yes(Arc::new(KeysExec {
            scan: node.clone(),
            access,
        }) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// The object stores of a runtime that decodes kura plans: a stored scan's store is known only
/// once the [`KeysExec`] above it is decoded, after the scan itself, which looks its store up.
/// Until then (and if no `KeysExec` ever comes), a `kura-stored` URL names an empty store, so a
/// scan without its keys finds no file rather than anything else.
#[derive(Debug, Default)]
pub struct Stores(DefaultObjectStoreRegistry);

impl ObjectStoreRegistry for Stores {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.0.register_store(url, store)
    }

    fn deregister_store(&self, url: &url::Url) -> Result<Arc<dyn ObjectStore>> {
        self.0.deregister_store(url)
    }

    fn get_store(&self, url: &url::Url) -> Result<Arc<dyn ObjectStore>> {
        self.0.get_store(url).or_else(|e| {
            if url.scheme() == kura_engine::stored::SCHEME {
                Ok(Arc::new(object_store::memory::InMemory::new()) as Arc<dyn ObjectStore>)
            } else {
                Err(e)
            }
        })
    }
}

const SCAN: &[u8] = b"kura-stored-scan-v2\0";
const UNITS: &[u8] = b"kura-units-v1\0";
const ROWS: &[u8] = b"kura-rows-per-unit-v1\0";

/// Ballista's codec (shuffles) with kura's stored scans and aggregate.
pub struct Codec {
    ballista: BallistaPhysicalExtensionCodec,
    open: OpenStore,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec").finish_non_exhaustive()
    }
}

impl Codec {
    pub fn new(open: OpenStore) -> Self {
        Self {
            ballista: BallistaPhysicalExtensionCodec::default(),
            open,
        }
    }
}

fn malformed(what: &str) -> DataFusionError {
    DataFusionError::Internal(format!("a cluster plan carried a malformed {what}"))
}

impl PhysicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(wire) = buf.strip_prefix(SCAN) else {
            return self.ballista.try_decode(buf, inputs, ctx, proto_converter);
        };
        let access = Access::from_wire(wire).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let [scan] = inputs else {
            return Err(malformed("scan"));
        };
        let exec = scan
            .downcast_ref::<DataSourceExec>()
            .ok_or_else(|| malformed("scan"))?;
        // The scan was decoded with the empty store [`Stores`] gives; it reads through a reader
        // of the dataset's store from here on.
        let store = (self.open)(access.origin.as_str())?;
        let scan = access
            .attach(exec, store)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Arc::new(KeysExec { scan, access }))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(keys) = node.downcast_ref::<KeysExec>() else {
            return self.ballista.try_encode(node, buf, proto_converter);
        };
        buf.extend_from_slice(SCAN);
        buf.extend_from_slice(&keys.access.to_wire());
        Ok(())
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> Result<Arc<AggregateUDF>> {
        match buf.strip_prefix(UNITS) {
            Some(cap) if name == kura_engine::units::NAME => {
                let cap = u64::from_be_bytes(cap.try_into().map_err(|_| malformed("count"))?);
                Ok(Arc::new(kura_engine::units::udaf(cap)))
            }
            _ => match buf.strip_prefix(ROWS) {
                Some(cap) if name == kura_engine::rows::NAME => {
                    let cap =
                        u64::from_be_bytes(cap.try_into().map_err(|_| malformed("row count"))?);
                    Ok(Arc::new(kura_engine::rows::udaf(cap)))
                }
                _ => self.ballista.try_decode_udaf(name, buf),
            },
        }
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> Result<()> {
        match kura_engine::units::cap_of(node) {
            Some(cap) => {
                buf.extend_from_slice(UNITS);
                buf.extend_from_slice(&cap.to_be_bytes());
                Ok(())
            }
            None => match kura_engine::rows::cap_of(node) {
                Some(cap) => {
                    buf.extend_from_slice(ROWS);
                    buf.extend_from_slice(&cap.to_be_bytes());
                    Ok(())
                }
                None => self.ballista.try_encode_udaf(node, buf),
            },
        }
    }
}
