//! Test plugin `kiln-test-noworld`: a valid component built against its own
//! tiny WIT world (in `wit/`) that exports only `greet`, so it implements no
//! Kiln world and `kiln plugin check` must say so. Not shipped.

mod bindings {
    wit_bindgen::generate!({
        world: "greeter",
        path: "wit",
    });
}

struct Greeter;

impl bindings::Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

bindings::export!(Greeter with_types_in bindings);
