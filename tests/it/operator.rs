//! The operator's day: commands run the way people run them.

use crate::support::run::{run, slipway};
use crate::support::{App, LocalHosts};

/// `slipway deploy` from a subfolder used to say "not a git repository";
/// like git, slipway now finds the repository from any folder inside it.
#[test]
fn slipway_finds_the_repository_from_a_subfolder() {
    let app = App::new("", &[("web/index.html", "v1\n")]);
    let hosts = LocalHosts::new(&app, 1);
    app.commit(
        "Configure",
        &[(
            "slipway.toml",
            &format!(
                "[app]\nname = \"shop\"\n[environments.production]\nbranch = \"production\"\nhosts = {}\ndeploy_to = \"{}\"\n",
                hosts.toml(),
                hosts.deploy_to
            ),
        )],
    );
    let sub = app.path().join("web");
    run(slipway(&sub), &["check"]).success();
    run(slipway(&sub), &["deploy", "production"]).success();
    assert!(hosts.current(0).is_some(), "deployed from web/");
}
