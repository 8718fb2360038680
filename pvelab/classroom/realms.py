"""Which student accounts a class stack owns, by realm (pure; the component, the policy and preflight use it).

PVE keeps a user of any realm in its own user.cfg (pve-access-control src/PVE/AccessControl.pm): for `pam`,
`ldap`, `ad` and `openid` that entry stands for a real person's account, often synced from a directory
(`pveum realm sync`), with their group memberships, ACLs and TFA. Deleting the user entry deletes all of that
(API2/User.pm delete_user). So a class stack creates, and on destroy deletes, only the account it made
itself: `<class>-<id>@pve`, the generated name of the `pve` realm (whose passwords PVE stores). Any other
user (another realm, or a named `user:` in the roster) must already exist: the stack looks it up (a missing
user stops `preview` with the lookup's error) and manages only that student's ACLs on their own pool and
network (API2/ACL.pm refuses an ACL for a user that does not exist: "user '...' does not exist"). The same
person in two classes then gets two sets of ACLs on two pools, and neither class's `down` touches the account.

Creating a user needs Realm.AllocateUser on /access/realm/<realm> and User.Modify on /access/groups
(API2/User.pm create_user); ACLs need Permissions.Modify on the path (API2/ACL.pm update_acl).
"""
from __future__ import annotations

PASSWORD_REALM = "pve"  # the only realm whose passwords PVE itself stores (and the only one a stack creates)


def realm_of(user: str) -> str:
    return user.rsplit("@", 1)[-1] if "@" in user else ""


def owned_user_id(pool: str) -> str:
    """The account a student's stack creates: `<class>-<id>@pve` (the pool name is `<class>-<id>`)."""
    return f"{pool}@{PASSWORD_REALM}"


def stack_owns_user(user: str, pool: str) -> bool:
    """True when the stack creates (and deletes on destroy) the student's user; else it must already exist."""
    return user == owned_user_id(pool)


def user_note(user: str, pool: str) -> str:
    """One line for `classroom plan` and the credentials sheet: who owns the account."""
    if stack_owns_user(user, pool):
        return f"{user}: created by the stack (realm {PASSWORD_REALM}, generated password), deleted by `classroom down`"
    return (f"{user}: an existing account (realm {realm_of(user) or '?'}): the stack only grants ACLs and never "
            f"creates or deletes it; it must exist before `classroom up`")
