from flask import Blueprint, current_app, render_template

blueprint = Blueprint("pages", __name__)


@blueprint.get("/")
def index():
    settings = current_app.extensions["image_search"].settings
    return render_template("index.html", duplicate_threshold=settings.duplicate_threshold)
