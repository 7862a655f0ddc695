//! The index (linkerd's style): watch events applied synchronously to the stores, each one
//! deciding what must happen next. Production feeds it from the kube watchers; tests call the
//! same methods with the objects they want, then drive the compile step and the reconciles.
//!
//! | event | store | compile | reconciles queued |
//! | --- | --- | --- | --- |
//! | a trunkline object applied | written | when spec, generation or identity changed | that object |
//! | a trunkline object deleted | removed | yes | none (the compile diff reaches its dependents) |
//! | a Secret applied or deleted | written | when its type or data changed | none: the compile diff triggers the objects whose verdict changed |
//! | a gateway pod changed | written | no | every object, when a pod's readiness, config hash or address changed (`Programmed` and the addresses in status of any object depend on every pod); the prober probes at once; the bundle's fleet membership is written again when the Ready pods changed |
//! | a gateway's report changed (prober) | - | no | every object, as for a pod change |
//! | a relist done (`InitDone`) | swapped in | yes | every object of that kind |

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::runtime::reflector::{ObjectRef, store::Writer};
use kube::runtime::watcher::Event;

use super::context::{Context, Reconciled, Writers, object_key};
use crate::api::{InboundTrunk, OutboundTrunk, TransferDestination};

/// The write side of the stores and the rules above.
pub struct Index {
    ctx: std::sync::Arc<Context>,
    writers: Writers,
}

impl Index {
    pub fn new(ctx: std::sync::Arc<Context>, writers: Writers) -> Index {
        Index { ctx, writers }
    }

    pub fn apply_inbound(&mut self, event: &Event<InboundTrunk>) {
        apply_object(&mut self.writers.inbound, &self.ctx, event);
    }

    pub fn apply_outbound(&mut self, event: &Event<OutboundTrunk>) {
        apply_object(&mut self.writers.outbound, &self.ctx, event);
    }

    pub fn apply_transfer(&mut self, event: &Event<TransferDestination>) {
        apply_object(&mut self.writers.transfers, &self.ctx, event);
    }

    pub fn apply_secret(&mut self, event: &Event<Secret>) {
        let store = &self.ctx.stores.secrets;
        let relevant = match event {
            Event::Apply(secret) => {
                let old = store.get(&ObjectRef::from_obj(secret));
                old.is_none_or(|o| {
                    o.type_ != secret.type_
                        || o.data != secret.data
                        || o.string_data != secret.string_data
                })
            }
            Event::Delete(_) | Event::InitDone => true,
            Event::Init | Event::InitApply(_) => false,
        };
        self.writers.secrets.apply_watcher_event(event);
        if relevant {
            self.ctx.compile_needed.notify_one();
        }
    }

    pub fn apply_pod(&mut self, event: &Event<Pod>) {
        self.writers.pods.apply_watcher_event(event);
        if matches!(event, Event::Init | Event::InitApply(_)) {
            return;
        }
        self.ctx.probe_now.notify_one();
        self.ctx.members_changed.notify_one();
        let _ = self.ctx.note_fleet();
    }
}

fn apply_object<K: Reconciled>(writer: &mut Writer<K>, ctx: &Context, event: &Event<K>) {
    let relevant = match event {
        Event::Apply(obj) => {
            let obj_ref = ObjectRef::from_obj(obj);
            let old = K::store(&ctx.stores).get(&obj_ref);
            writer.apply_watcher_event(event);
            ctx.trigger(obj_ref);
            old.is_none_or(|o| o.compile_inputs_differ(obj))
        }
        Event::Delete(obj) => {
            writer.apply_watcher_event(event);
            if let Some(key) = object_key(obj) {
                ctx.forget(&key);
            }
            true
        }
        Event::Init | Event::InitApply(_) => {
            writer.apply_watcher_event(event);
            false
        }
        Event::InitDone => {
            writer.apply_watcher_event(event);
            ctx.forget_missing::<K>();
            ctx.trigger_all::<K>();
            true
        }
    };
    if relevant {
        ctx.compile_needed.notify_one();
    }
}
