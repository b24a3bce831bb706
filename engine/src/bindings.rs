//! Host-side bindings generated from the WIT contract in `wit/`.
//!
//! Exports are async so that a policy call can yield on every epoch tick and
//! be cancelled at its deadline; the one import (`log`) is synchronous.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "admission-policy",
    exports: { default: async },
});
